"""A real uvicorn server on 127.0.0.1 in a background thread, around any pool."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn

from gpufleet import Pool
from gpufleet.server import create_app, load_model
from gpufleet.tools.synth import text_image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(pool: Pool, **app_options: Any) -> Iterator[tuple[str, Any]]:
    """Serve ``create_app(pool, **app_options)`` on a free loopback port; yields (base URL, app)."""
    app = create_app(pool, **app_options)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:  # uvicorn sets this once it listens
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(10)


def jpeg(angle: int = 0, seed: int = 0, size: tuple[int, int] = (224, 224)) -> bytes:
    buf = io.BytesIO()
    text_image(size=size, angle=angle, seed=seed).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="session")
def orientation_pool() -> Iterator[Pool]:
    model, _ = load_model("orientation")
    with Pool(model, cpu_devices=2, max_batch_size=16, max_wait_ms=2) as pool:
        yield pool


@pytest.fixture(scope="session")
def orientation_server(orientation_pool: Pool) -> Iterator[tuple[str, Any]]:
    with live_server(orientation_pool, model_name="orientation", max_body_mb=64) as srv:
        yield srv


@pytest.fixture(scope="session")
def url(orientation_server: tuple[str, Any]) -> str:
    return orientation_server[0]
