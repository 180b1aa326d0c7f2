"""``gpufleet.Client`` / ``AsyncClient`` against a real ``gpufleet serve``: success paths, errors mapped back to
gpufleet's classes, retries on 429 honouring Retry-After, deadlines; 503 and connection retries with a mock."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest

import gpufleet
from gpufleet import AsyncClient, Client, ClientError, Retry
from tests.e2e.serving import ROOT, free_port, start_server, wait_ready

ECHO = f"{ROOT / 'tests' / 'server' / 'echo_model.py'}:Echo"
SLOW = f"{ROOT / 'tests' / 'server' / 'slow_model.py'}:SlowModel"
TOKEN = "t0ken"


def _serve(model: str, *args: str, env: dict[str, str] | None = None,
           headers: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = start_server(model, port, *args, env=env)
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, base, headers=headers, timeout_s=120)
    return proc, base


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def echo() -> str:
    proc, base = _serve(ECHO, "--token", TOKEN, "--model-name", "echo", headers={"Authorization": f"Bearer {TOKEN}"})
    yield base
    _stop(proc)


@pytest.fixture(scope="module")
def slow() -> str:
    # One worker, one item at a time, 1 s each, room for one outstanding item: the second caller gets 429.
    proc, base = _serve(SLOW, "--max-queue", "1", "--max-batch-size", "1", env={"SLOW_MODEL_S": "1.0"})
    yield base
    _stop(proc)


def test_predict_infer_health_stats(echo: str) -> None:
    with Client(echo, token=TOKEN) as c:
        assert c.predict({"a": 1}) == {"echo": {"a": 1}}
        assert c.predict(b"\x00raw", content_type="application/octet-stream") == {
            "bytes": 4, "sha256": hashlib.sha256(b"\x00raw").hexdigest()}
        assert c.predict_batch([1, "two"]) == [{"echo": 1}, {"echo": "two"}]
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        r = c.infer({"input": x}, request_id="q1")
        assert r.model_name == "echo" and r.id == "q1"
        # Echo declares no inputs: its items are Python values, as from /predict (docs/serving.md), so each row
        # comes back as {"echo": row} and the output is named after that key
        np.testing.assert_array_equal(r["echo"], x)
        blobs = np.array([b"ab", b"", b"xyz"], dtype=object)
        r = c.infer(blobs, outputs=["sha256"])  # a bare array is the input "input"
        assert [v.decode() for v in r["sha256"]] == [hashlib.sha256(b).hexdigest() for b in blobs]
        assert r.as_numpy("bytes") is None
        assert c.health()["healthy"] is True and c.ready() is True
        stats = c.stats()
        assert stats["server"]["model"] == "echo" and "per_gpu_stats" in stats
        assert c.model_metadata()["name"] == "echo"


def test_errors_map_back_to_gpufleet_classes(echo: str) -> None:
    with Client(echo, token=TOKEN) as c:
        with pytest.raises(gpufleet.InputError) as exc:
            c.predict("bad-input")
        assert exc.value.status == 400 and "bad-input" in str(exc.value)
        with pytest.raises(gpufleet.WorkerError) as exc:
            c.predict("boom")
        assert exc.value.status == 500
        with pytest.raises(ClientError) as exc:
            c.infer({"input": np.ones(1, np.float32)}, model="nope")
        assert exc.value.status == 404 and "nope" in str(exc.value)
    with Client(echo, token="wrong") as c, pytest.raises(ClientError) as exc:
        c.stats()
    assert exc.value.status == 401


def test_429_is_retried_after_retry_after_then_succeeds(slow: str) -> None:
    with Client(slow) as c:
        assert c.predict("warm") == {"echo": "warm"}
        busy = threading.Thread(target=lambda: c.predict("first"))
        busy.start()
        while c.stats()["server"]["inflight_requests"] < 1:
            time.sleep(0.01)
        # Without retries: the 429 comes back as QueueFullError.
        with Client(slow, retry=Retry(attempts=1)) as once, pytest.raises(gpufleet.QueueFullError) as exc:
            once.predict("refused")
        assert exc.value.status == 429
        # With retries: waits at least Retry-After (1 s), then is served.
        t0 = time.monotonic()
        assert c.predict("second") == {"echo": "second"}
        assert time.monotonic() - t0 >= 0.9
        busy.join(30)


def test_deadline_becomes_deadline_exceeded(slow: str) -> None:
    with Client(slow, retry=Retry(attempts=1)) as c:
        time.sleep(1.1)  # let the previous test's work finish
        t0 = time.monotonic()
        with pytest.raises(gpufleet.DeadlineExceeded):
            c.infer({"input": np.ones(1, np.float32)}, timeout_s=0.3)
        assert time.monotonic() - t0 < 0.9


def test_async_client_gathers_concurrent_calls(echo: str) -> None:
    async def main() -> list:
        async with AsyncClient(echo, token=TOKEN, model="echo") as c:
            assert await c.ready()
            results = await asyncio.gather(*(c.predict({"i": i}) for i in range(16)))
            r = await c.infer({"input": np.ones((2, 2), np.int64)})
            assert r["echo"].tolist() == [[1, 1], [1, 1]]  # no declared inputs: rows arrive as lists
            with pytest.raises(gpufleet.InputError):
                await c.predict("bad-input")
            return results

    assert asyncio.run(main()) == [{"echo": {"i": i}} for i in range(16)]


def test_503_retries_are_bounded_and_honour_retry_after() -> None:
    seen: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        if len(seen) < 3:
            return httpx.Response(503, json={"error": "draining"}, headers={"Retry-After": "0.2"})
        return httpx.Response(200, json={"ok": True})

    with Client("http://x", transport=httpx.MockTransport(answer)) as c:
        assert c.predict(1) == {"ok": True}
    assert len(seen) == 3 and all(b - a >= 0.19 for a, b in zip(seen, seen[1:]))

    seen.clear()
    with Client("http://x", transport=httpx.MockTransport(answer), retry=Retry(attempts=2)) as c:
        with pytest.raises(gpufleet.PoolClosed) as exc:
            c.predict(1)
    assert exc.value.status == 503 and len(seen) == 2

    seen.clear()
    # Total time bounds the retries too: a 5 s Retry-After does not fit a 1 s budget.
    slow_retry = httpx.MockTransport(lambda r: (seen.append(0), httpx.Response(429, headers={"Retry-After": "5"}))[1])
    t0 = time.monotonic()
    with Client("http://x", transport=slow_retry, retry=Retry(total_s=1.0)) as c, \
            pytest.raises(gpufleet.QueueFullError):
        c.predict(1)
    assert time.monotonic() - t0 < 0.5 and len(seen) == 1


def test_connection_refused_is_retried_then_a_client_error() -> None:
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with Client(f"http://127.0.0.1:{port}", retry=Retry(attempts=3, backoff_s=0.01)) as c, \
            pytest.raises(ClientError) as exc:
        c.stats()
    assert exc.value.status is None and "cannot reach" in str(exc.value) and time.monotonic() - t0 < 5
