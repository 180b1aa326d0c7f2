"""Every embedded model from every entry point (issue 18): ``Pool("name")``, the server (``load_model`` + app on
127.0.0.1, one ``/predict``), ``gpufleet video --model`` and ``gpufleet bench``, on one CPU device with tiny
inputs. All four resolve names through :mod:`gpufleet.models.resolve`; before it, ``video --model resnet18``
crashed (``TorchModel.__init__() got an unexpected keyword argument 'runtime'``) while ``serve`` worked.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("av")

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from gpufleet import Pool  # noqa: E402
from gpufleet.cli import app as cli  # noqa: E402
from gpufleet.server import create_app, load_model  # noqa: E402
from gpufleet.server.run import pool_config  # noqa: E402
from gpufleet.tools import synth  # noqa: E402
from gpufleet.video.sinks import encode_frames  # noqa: E402

MODELS = ("orientation", "textdet", "resnet18", "resnet50")


def _box(item: dict) -> bool:
    return len(item["box"]) == 4 and 0 <= item["score"] <= 1


# One result of each model, as JSON would carry it.
CHECKS: dict[str, Callable[[Any], bool]] = {
    "orientation": lambda r: set(r) == {"angle", "class", "score"} and r["angle"] in (0, 90, 180, 270),
    "textdet": lambda r: isinstance(r, list) and all(_box(b) for b in r),
    "resnet18": lambda r: set(r) == {"class", "score"} and 0 <= r["class"] < 1000,
    "resnet50": lambda r: set(r) == {"class", "score"} and 0 <= r["class"] < 1000,
}


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    buf = io.BytesIO()
    synth.text_image(size=(96, 64), angle=90, seed=1).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("entry") / "tiny.mp4"
    encode_frames(path, (f for f, _ in synth.moving_text_frames(3, size=(64, 48), n_lines=1, seed=2)), gop=3)
    return path


@contextmanager
def _served(pool: Pool, name: str) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(pool, model_name=name), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("name", MODELS)
def test_pool(name: str, jpeg: bytes) -> None:
    with Pool(name, cpu_devices=1, max_batch_size=2, max_wait_ms=1) as pool:
        result = pool.submit(jpeg).result(timeout=60)
    assert CHECKS[name](result), result
    if name == "orientation":
        assert result["angle"] == 90


@pytest.mark.parametrize("name", MODELS)
def test_serve(name: str, jpeg: bytes) -> None:
    target, model_name = load_model(name)  # what `gpufleet serve NAME` does before it starts uvicorn
    with Pool(target, config=pool_config({"cpu_devices": 1, "max_batch_size": 2, "max_wait_ms": 1.0}, {})) as pool, \
            _served(pool, model_name) as url:
        r = httpx.post(f"{url}/predict", json={"image": base64.b64encode(jpeg).decode()}, timeout=60)
        ready = httpx.get(f"{url}/v2/models/{name}/ready", timeout=10)
    assert r.status_code == 200, r.text
    assert CHECKS[name](r.json()), r.json()
    assert ready.status_code == 200


@pytest.mark.parametrize("name", MODELS)
def test_video(name: str, clip: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "frames.jsonl"
    r = CliRunner().invoke(cli, ["video", str(clip), "--model", name, "--cpu-devices", "1", "--batch-size", "2",
                                 "--jsonl", str(jsonl), "--no-progress", "--json"])
    assert r.exit_code == 0, r.output or repr(r.exception)
    frames = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [f["frame"] for f in frames] == [0, 1, 2]
    assert all(CHECKS[name](f["results"]) for f in frames), frames[0]


@pytest.mark.parametrize("name", MODELS)
def test_bench(name: str) -> None:
    r = CliRunner().invoke(cli, ["bench", "--model", name, "--batch-sizes", "1", "--image-size", "32", "--seconds",
                                 "0.1", "--cpu-devices", "1", "--json"])
    assert r.exit_code == 0, r.output or repr(r.exception)
    row = json.loads(r.stdout)["rows"][0]
    assert row["raw"]["items_s"] > 0 and row["pool"]["items_s"] > 0


def test_process_worker_rebuilds_the_named_model(jpeg: bytes) -> None:
    """A process worker's child gets the name and resolves it with the same resolver."""
    with Pool("resnet18", cpu_devices=1, backend="process", max_batch_size=2, max_wait_ms=1) as pool:
        result = pool.submit(jpeg).result(timeout=120)
    assert CHECKS["resnet18"](result), result
