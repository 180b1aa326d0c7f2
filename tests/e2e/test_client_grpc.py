"""``gpufleet.Client`` / ``AsyncClient`` over KServe v2 gRPC (``grpc://``) against a real ``gpufleet serve
--grpc-port``: typed results, errors mapped to gpufleet's classes, UNAVAILABLE and RESOURCE_EXHAUSTED retried,
deadlines."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import threading
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("grpc")

import gpufleet  # noqa: E402
from gpufleet import AsyncClient, Client, ClientError, Retry  # noqa: E402
from tests.e2e.serving import ROOT, free_port, start_server, wait_ready  # noqa: E402
from tests.e2e.test_client import _stop  # noqa: E402

ECHO = f"{ROOT / 'tests' / 'server' / 'echo_model.py'}:Echo"
SLOW = f"{ROOT / 'tests' / 'server' / 'slow_model.py'}:SlowModel"
TOKEN = "t0ken"


def _serve(model: str, gport: int, *args: str, env: dict[str, str] | None = None,
           headers: dict[str, str] | None = None) -> subprocess.Popen:
    port = free_port()
    proc = start_server(model, port, "--grpc-port", str(gport), *args, env=env)
    wait_ready(proc, f"http://127.0.0.1:{port}", headers=headers, timeout_s=120)
    return proc


@pytest.fixture(scope="module")
def echo() -> str:
    gport = free_port()
    proc = _serve(ECHO, gport, "--token", TOKEN, "--model-name", "echo", headers={"Authorization": f"Bearer {TOKEN}"})
    yield f"grpc://127.0.0.1:{gport}"
    _stop(proc)


@pytest.fixture(scope="module")
def slow() -> Any:
    """One worker, one item at a time, 1 s each, room for one outstanding item. A call is made before the
    server is up: UNAVAILABLE until it listens, retried, then served."""
    gport = free_port()
    early: dict[str, Any] = {}

    def call_early() -> None:
        retry = Retry(attempts=1000, backoff_s=0.05, max_backoff_s=0.2, total_s=180)
        with Client(f"grpc://127.0.0.1:{gport}", model="SlowModel", retry=retry) as c:
            early["result"] = c.predict(np.float32(1.5), timeout_s=180)

    thread = threading.Thread(target=call_early)
    thread.start()
    proc = _serve(SLOW, gport, "--max-queue", "1", "--max-batch-size", "1", env={"SLOW_MODEL_S": "1.0"})
    thread.join(60)
    yield f"grpc://127.0.0.1:{gport}", early
    _stop(proc)


def test_infer_predict_health_metadata(echo: str) -> None:
    with Client(echo, token=TOKEN, model="echo") as c:
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        r = c.infer({"input": x}, request_id="q1")
        assert r.model_name == "echo" and r.id == "q1"
        np.testing.assert_array_equal(r["output"], x * 2)  # over gRPC rows arrive as arrays: Echo doubles them
        blobs = np.array([b"ab", b"", b"xyz"], dtype=object)
        r = c.infer(blobs, outputs=["sha256"])  # a bare array is the input "input"
        assert [v.decode() for v in r["sha256"]] == [hashlib.sha256(b).hexdigest() for b in blobs]
        assert r.as_numpy("bytes") is None
        assert c.predict(b"\x00raw") == {"bytes": 4, "sha256": hashlib.sha256(b"\x00raw").hexdigest().encode()}
        assert [d["bytes"] for d in c.predict_batch([b"a", b"bc"])] == [1, 2]
        assert c.predict(np.ones(3, np.int64)) == {"output": [2, 2, 2]}
        assert c.health() == {"healthy": True, "live": True, "ready": True} and c.ready()
        meta = c.model_metadata()
        assert meta["name"] == "echo" and meta["platform"] == "gpufleet"
        with pytest.raises(ClientError, match="HTTP"):
            c.stats()


def test_errors_map_back_to_gpufleet_classes(echo: str) -> None:
    with Client(echo, token=TOKEN, model="echo") as c:
        with pytest.raises(ClientError) as exc:
            c.infer({"input": np.ones(1, np.float32)}, model="nope")
        assert exc.value.status == 404 and exc.value.code == "NOT_FOUND" and "nope" in str(exc.value)
        with pytest.raises(gpufleet.InputError) as exc:
            c.infer({"a": np.ones(2, np.float32), "b": np.ones(3, np.float32)})  # rows differ
        assert exc.value.status == 400 and exc.value.code == "INVALID_ARGUMENT"
        with pytest.raises(ValueError, match="over HTTP"):
            c.predict({"a": 1})
    with Client(echo, token="wrong", model="echo") as c:
        with pytest.raises(ClientError) as exc:
            c.infer(np.ones(1, np.float32))
        assert exc.value.status == 401 and exc.value.code == "UNAUTHENTICATED"
        assert c.ready() is False  # refused, not raised
    with Client(echo, token=TOKEN) as c, pytest.raises(ValueError, match="model"):
        c.infer(np.ones(1, np.float32))  # over gRPC the model name is needed


def test_async_client_gathers_concurrent_calls(echo: str) -> None:
    async def main() -> list:
        async with AsyncClient(echo, token=TOKEN, model="echo") as c:
            assert await c.ready() and (await c.health())["ready"]
            rows = await asyncio.gather(*(c.predict(np.full(2, i, np.int64)) for i in range(16)))
            r = await c.infer({"input": np.ones((2, 2), np.int64)})
            assert r["output"].tolist() == [[2, 2], [2, 2]]
            assert (await c.model_metadata())["name"] == "echo"
            return rows

    assert asyncio.run(main()) == [{"output": [2 * i, 2 * i]} for i in range(16)]


def test_unavailable_then_resource_exhausted_are_retried(slow: Any) -> None:
    url, early = slow
    assert early.get("result") == {"echo": 1.5}  # asked before the server listened: UNAVAILABLE, retried
    with Client(url, model="SlowModel") as c:
        busy = threading.Thread(target=lambda: c.predict(np.float32(1)))
        busy.start()
        time.sleep(0.3)  # the busy call holds the only slot for a second
        with Client(url, model="SlowModel", retry=Retry(attempts=1)) as once, \
                pytest.raises(gpufleet.QueueFullError) as exc:
            once.predict(np.float32(2))
        assert exc.value.status == 429 and exc.value.code == "RESOURCE_EXHAUSTED"
        # With retries: waits at least the server's retry-after (1 s), then is served.
        t0 = time.monotonic()
        assert c.predict(np.float32(3)) == {"echo": 3.0}
        assert time.monotonic() - t0 >= 0.9
        busy.join(30)


def test_deadline_becomes_deadline_exceeded(slow: Any) -> None:
    url, _ = slow
    with Client(url, model="SlowModel", retry=Retry(attempts=1)) as c:
        time.sleep(1.1)  # let the previous test's work finish
        with pytest.raises(gpufleet.DeadlineExceeded) as exc:
            c.infer({"input": np.ones(1, np.float32)}, timeout_s=0.3)
        assert exc.value.code == "DEADLINE_EXCEEDED"
