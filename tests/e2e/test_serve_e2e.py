"""``python -m gpufleet serve`` as a real process: serve, then SIGTERM with requests in flight."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import httpx

from tests.e2e.serving import ROOT, free_port, start_server, wait_ready

MODEL = ROOT / "tests" / "server" / "slow_model.py"


def _start(port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return start_server(f"{MODEL}:SlowModel", port, *args, env=env)



def test_sigterm_drains_in_flight_requests_and_exits_0() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # One worker, batches of 2, 0.4 s each: 8 requests keep it busy for ~1.6 s after the signal.
    proc = _start(port, "--max-batch-size", "2", "--max-wait-ms", "1", "--drain-timeout-s", "30",
                  env={"SLOW_MODEL_S": "0.4"})
    try:
        wait_ready(proc, base, timeout_s=60)
        assert httpx.post(f"{base}/predict", json="warm").json() == {"echo": "warm"}
        results: list[httpx.Response | BaseException] = []
        lock = threading.Lock()

        def send(i: int) -> None:
            try:
                r = httpx.post(f"{base}/predict", json={"i": i}, timeout=60)
            except BaseException as exc:  # noqa: BLE001 - recorded and asserted below
                r = exc
            with lock:
                results.append(r)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/stats").json()["server"]["inflight_requests"] < 8:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        # While draining: readiness is 503, new work is refused with 503, liveness stays up.
        drain_seen = False
        while any(t.is_alive() for t in threads):
            try:
                ready = httpx.get(f"{base}/v2/health/ready", timeout=2)
                if ready.status_code == 503:
                    drain_seen = True
                    assert httpx.post(f"{base}/predict", json="late", timeout=5).status_code == 503
                    health = httpx.get(f"{base}/health", timeout=2).json()
                    assert health["draining"] is True and health["healthy"] is False
                    break
            except httpx.TransportError:
                break
        for t in threads:
            t.join(60)
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, out
        assert drain_seen, "readiness never turned 503 while requests were in flight"
        assert len(results) == 8
        for r in results:
            assert isinstance(r, httpx.Response) and r.status_code == 200, r
        assert sorted(r.json()["echo"]["i"] for r in results) == list(range(8))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_serve_env_and_token_flags() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(port, "--token", "tok", env={"MAX_BATCH_SIZE": "3", "SLOW_MODEL_S": "0.01"})
    try:
        wait_ready(proc, base, {"authorization": "Bearer tok"}, timeout_s=60)
        assert httpx.get(f"{base}/stats").status_code == 401
        stats = httpx.get(f"{base}/stats", headers={"authorization": "Bearer tok"}).json()
        assert stats["per_worker_stats"][0]["max_batch_size"] == 3  # from MAX_BATCH_SIZE
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_json_log_format_writes_one_json_object_per_line() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(port, "--log-format", "json", env={"SLOW_MODEL_S": "0.01"})
    try:
        wait_ready(proc, base, timeout_s=60)
        proc.send_signal(signal.SIGTERM)  # the drain is logged at WARNING
        assert proc.wait(30) == 0
        out = proc.communicate()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, "nothing was logged"
    records = [json.loads(line) for line in lines]  # every line is JSON, uvicorn's included
    assert any("draining" in r["message"] for r in records)
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
