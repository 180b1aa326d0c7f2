"""Admission control over HTTP: 429 under a tiny queue, 504 deadlines, disconnects cancel queued work."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import orjson
import pytest
import slow_model
from slow_model import Failing, SlowModel

from gpufleet import Pool
from tests.server.conftest import live_server


@pytest.fixture()
def slow_pool(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SLOW_MODEL_S", "0.02")
    with Pool(SlowModel, cpu_devices=1, max_batch_size=2, max_wait_ms=1, max_queue=4) as pool:
        yield pool


def test_tiny_queue_gives_429_with_retry_after_and_loses_nothing(slow_pool: Pool) -> None:
    async def run(base: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:
            async def client(k: int) -> list[httpx.Response]:
                return [await c.post("/predict", json={"k": k, "i": i}) for i in range(3)]

            per_client = await asyncio.wait_for(asyncio.gather(*(client(k) for k in range(64))), 60)
            return [r for rs in per_client for r in rs]

    with live_server(slow_pool, model_name="slow") as (base, _):
        responses = asyncio.run(run(base))
        assert len(responses) == 64 * 3
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429}, set(codes)
        assert 200 in codes and 429 in codes
        for r in responses:
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1" and "queue full" in r.json()["error"]
            else:
                assert r.json()["echo"]["k"] >= 0
        assert slow_pool.outstanding == 0
        assert httpx.get(f"{base}/health").json()["healthy"] is True


def test_deadline_gives_504(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLOW_MODEL_S", "0.3")
    with Pool(SlowModel, cpu_devices=1, max_batch_size=1, max_wait_ms=0) as pool, \
            live_server(pool, request_timeout_s=0.1) as (base, _):
        async def run() -> list[int]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as c:
                rs = await asyncio.gather(*(c.post("/predict", json=i) for i in range(4)))
                return [r.status_code for r in rs]

        codes = asyncio.run(run())
        assert set(codes) <= {200, 504} and 504 in codes


def test_a_running_item_past_its_deadline_is_504_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # A thread worker cannot stop its predict (3 s here): the server answers 504 when the deadline passes
    # anyway, and the worker's late answer is dropped.
    monkeypatch.setenv("SLOW_MODEL_S", "3.0")
    with Pool(SlowModel, cpu_devices=1, max_batch_size=1, max_wait_ms=0, timeout_s=0.3) as pool, \
            live_server(pool) as (base, _):
        t0 = time.monotonic()
        r = httpx.post(f"{base}/predict", json="slow", timeout=30)
        assert r.status_code == 504 and "deadline" in r.json()["error"]
        assert time.monotonic() - t0 < 2.5  # answered at the deadline, not when predict returned


def test_worker_error_is_500_json() -> None:
    with Pool(Failing, cpu_devices=1, max_batch_size=1) as pool, live_server(pool) as (base, _):
        r = httpx.post(f"{base}/predict", json="boom")
        assert r.status_code == 500 and "boom" in r.json()["error"]
        assert httpx.post(f"{base}/predict", json="fine").json() == "fine"


def _raw_post(port: int, body: object) -> socket.socket:
    data = orjson.dumps(body)
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return s


def test_client_disconnect_cancels_queued_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLOW_MODEL_S", "1.0")
    slow_model.SEEN.clear()
    with Pool(SlowModel, cpu_devices=1, max_batch_size=1, max_wait_ms=0) as pool, \
            live_server(pool) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        busy = _raw_post(port, "busy")  # occupies the only worker for a second
        while "busy" not in slow_model.SEEN and pool.stats()["per_gpu_stats"][0]["outstanding"] == 0:
            time.sleep(0.01)
        gone = _raw_post(port, "gone")
        while pool.outstanding < 2:
            time.sleep(0.01)
        gone.close()  # the client goes away while its item is still queued
        assert b"200 OK" in busy.recv(65536)
        busy.close()
        end = time.monotonic() + 10
        while pool.outstanding and time.monotonic() < end:
            time.sleep(0.02)
        assert pool.outstanding == 0
        assert "gone" not in slow_model.SEEN


def test_a_dead_worker_is_503_with_retry_after_and_a_model_error_500() -> None:
    from gpufleet.errors import WorkerDied, WorkerError
    from gpufleet.server.errors import error_response

    died = error_response(WorkerDied("worker-0@cuda:0: the worker process was killed by SIGKILL; gave up"))
    assert died.status_code == 503 and died.headers["retry-after"] == "1"
    assert error_response(WorkerError("worker-0@cuda:0: predict failed: ValueError: x")).status_code == 500
