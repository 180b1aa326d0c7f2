"""``gpufleet serve --http-workers 2`` as real processes: one engine process, two uvicorn front ends."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.e2e.serving import ROOT, free_port, start_server, wait_ready

MODEL = f"{ROOT / 'tests' / 'server' / 'echo_model.py'}:Echo"
FRONTEND = "x-gpufleet-frontend"


def _start(port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return start_server(MODEL, port, *args, env=env)



def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    proc = _start(port, "--http-workers", "2", "--max-batch-size", "4", "--max-wait-ms", "1", "--max-queue", "8",
                  "--timeout-s", "1.0")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        yield base, proc
    finally:
        out = _stop(proc)
        assert proc.returncode == 0, out


def test_predict_json_raw_and_batch(server: tuple[str, subprocess.Popen]) -> None:
    base, proc = server
    r = httpx.post(f"{base}/predict", json={"a": [1, 2], "s": "é"})
    assert r.status_code == 200 and r.json() == {"echo": {"a": [1, 2], "s": "é"}}
    assert int(r.headers[FRONTEND]) != proc.pid
    blob = bytes(range(256)) * 40
    r = httpx.post(f"{base}/predict", content=blob, headers={"content-type": "image/jpeg"})
    import hashlib

    assert r.json() == {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    r = httpx.post(f"{base}/predict/batch", json=[1, "two", {"three": 3}])
    assert r.json() == {"outputs": [{"echo": 1}, {"echo": "two"}, {"echo": {"three": 3}}]}


def test_requests_are_spread_over_both_front_ends(server: tuple[str, subprocess.Popen]) -> None:
    base, proc = server
    pids = set()
    for i in range(40):  # a new connection each time: the kernel's SO_REUSEPORT hash picks the front end
        r = httpx.post(f"{base}/predict", json=i)
        assert r.status_code == 200
        pids.add(int(r.headers[FRONTEND]))
        if len(pids) == 2:
            break
    assert len(pids) == 2 and proc.pid not in pids


def test_kserve_tritonclient_json_and_binary(server: tuple[str, subprocess.Popen]) -> None:
    import tritonclient.http as httpclient

    base, _ = server
    client = httpclient.InferenceServerClient(base.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("Echo")
        meta = client.get_model_metadata("Echo")
        assert meta["name"] == "Echo" and meta["inputs"][0]["name"] == "input"  # shipped from the engine
        rng = np.random.default_rng(0)
        for dtype, datatype in ((np.float32, "FP32"), (np.float16, "FP16"), (np.int32, "INT32")):
            x = (rng.standard_normal((3, 5)) * 50).astype(dtype)
            for binary in (True, False):
                inp = httpclient.InferInput("input", list(x.shape), datatype)
                inp.set_data_from_numpy(x, binary_data=binary)
                # Echo declares no inputs: its items are Python lists, as /predict gives (docs/serving.md)
                out = httpclient.InferRequestedOutput("echo", binary_data=binary)
                got = client.infer("Echo", [inp], outputs=[out]).as_numpy("echo")
                assert np.array_equal(got, x.tolist()), (datatype, binary)
    finally:
        client.close()


def test_errors_map_to_the_same_statuses(server: tuple[str, subprocess.Popen]) -> None:
    base, _ = server
    r = httpx.post(f"{base}/predict", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = httpx.post(f"{base}/predict", json="bad-input")  # InputError raised in the engine process
    assert r.status_code == 400 and "'bad-input' is not a valid item" in r.json()["error"]
    assert httpx.post(f"{base}/predict", json="boom").status_code == 500  # WorkerError
    assert httpx.post(f"{base}/predict", content=b"x", headers={"content-type": "text/csv"}).status_code == 415
    assert httpx.post(f"{base}/v2/models/nope/infer", json={"inputs": []}).status_code == 404


def test_tiny_queue_gives_429_with_retry_after(server: tuple[str, subprocess.Popen]) -> None:
    base, _ = server

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=40)) as c:
            return await asyncio.gather(*(c.post("/predict", json={"sleep": 0.1, "k": k}) for k in range(40)))

    responses = asyncio.run(run())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429, 504}, set(codes)  # 504: a loaded machine may push an item past 1 s
    assert 200 in codes and 429 in codes
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and "queue full" in r.json()["error"]


def test_deadline_gives_504(server: tuple[str, subprocess.Popen]) -> None:
    base, _ = server
    results: list[int] = []
    blocker = threading.Thread(target=lambda: results.append(
        httpx.post(f"{base}/predict", json={"sleep": 1.5}, timeout=30).status_code))
    blocker.start()
    time.sleep(0.3)  # the blocker runs on the only device; this item waits past its 1 s deadline
    r = httpx.post(f"{base}/predict", json="late", timeout=30)
    blocker.join(30)
    # the blocker itself runs past its deadline: answered 504 at the deadline too, not when predict returns
    assert r.status_code == 504 and "deadline" in r.json()["error"] and results == [504]


def test_stats_health_and_metrics_come_from_the_engine(server: tuple[str, subprocess.Popen]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    base, proc = server
    stats = httpx.get(f"{base}/stats").json()
    assert stats["num_gpus"] == 1 and stats["per_gpu_stats"][0]["device"] == "cpu:0"
    assert stats["per_gpu_stats"][0]["total_requests"] > 0  # counts the items of both front ends
    assert stats["server"]["frontend_pid"] != proc.pid
    health = httpx.get(f"{base}/health").json()
    assert health["healthy"] is True and health["backends"][0]["device"] == "cpu:0"
    text = httpx.get(f"{base}/metrics").text
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"gpufleet_device_items", "gpufleet_http_requests", "gpufleet_pool_ready"} <= names


def _frontend_pids(base: str, want: int = 2, tries: int = 200) -> set[int]:
    pids: set[int] = set()
    for _ in range(tries):
        try:
            r = httpx.post(f"{base}/predict", json="ping", timeout=10)
        except httpx.TransportError:
            continue  # a connection to a front end that was just killed
        if r.status_code == 200:
            pids.add(int(r.headers[FRONTEND]))
        if len(pids) >= want:
            break
    return pids


def test_frontend_crash_is_restarted_then_sigterm_drains() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(port, "--max-batch-size", "2", "--max-wait-ms", "1", "--drain-timeout-s", "30",
                  env={"GPUFLEET_HTTP_WORKERS": "2"})
    try:
        wait_ready(proc, base)
        before = _frontend_pids(base)
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        after: set[int] = set()
        while time.monotonic() < deadline:  # the supervisor restarts it; the engine keeps serving
            after = _frontend_pids(base, tries=20)
            if len(after) == 2 and victim not in after:
                break
            time.sleep(0.1)
        assert len(after) == 2 and victim not in after and (after & before), (before, after)
        assert httpx.get(f"{base}/health").json()["healthy"] is True

        # SIGTERM with 6 items in flight (3 batches of 2, 0.4 s each): every one is answered, exit 0.
        results: list[httpx.Response | BaseException] = []
        lock = threading.Lock()

        def send(i: int) -> None:
            try:
                r = httpx.post(f"{base}/predict", json={"sleep": 0.4, "i": i}, timeout=60)
            except BaseException as exc:  # noqa: BLE001 - asserted below
                r = exc
            with lock:
                results.append(r)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/stats").json()["queue_depth"] < 6:  # the engine holds all six
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        drain_seen = False
        while any(t.is_alive() for t in threads) and not drain_seen:
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 503:
                    drain_seen = True
                    assert httpx.post(f"{base}/predict", json="late", timeout=5).status_code == 503
            except httpx.TransportError:
                break
            time.sleep(0.02)
        for t in threads:
            t.join(60)
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, out
        assert "restarting" in out, out
        assert drain_seen, "readiness never turned 503 while requests were in flight"
        assert len(results) == 6 and all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results), \
            results
        assert sorted(r.json()["echo"]["i"] for r in results) == list(range(6))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_dashboard_drain_and_enable_reach_the_engine(server: tuple[str, subprocess.Popen]) -> None:
    base, _ = server
    assert httpx.get(f"{base}/dashboard").status_code == 200
    assert [r["device"] for r in httpx.get(f"{base}/monitor").json()["latest"]] == ["cpu:0"]
    r = httpx.post(f"{base}/admin/devices/cpu:0/drain")
    assert r.status_code == 200 and r.json() == {"device": "cpu:0", "enabled": False, "workers": [0]}
    try:  # every front end sees the engine's state
        for _ in range(4):
            assert httpx.get(f"{base}/health").json()["backends"][0]["enabled"] is False
    finally:
        r = httpx.post(f"{base}/admin/devices/cpu:0/enable")
    assert r.status_code == 200 and r.json()["enabled"] is True
    # Routed again. With its only device drained the engine was not ready, and front ends learn readiness
    # from the engine's state pushes: 503 until the next one; 504 when this server's 1 s item deadline
    # passes on a loaded machine. Both are retried; anything else is a failure.
    codes = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        codes.append(httpx.post(f"{base}/predict", json="after", timeout=10).status_code)
        if codes[-1] not in (503, 504):
            break
        time.sleep(0.05)
    assert codes[-1] == 200, codes


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_front_ends_run_a_pure_preprocess_themselves(backend: str) -> None:
    """orientation's preprocess (JPEG decode, resize) runs in the front ends: answers are right, bad images
    get 400, and the engine's workers (threads, or process workers' children) skip it: no preprocess stage."""
    from tests.server.conftest import b64, jpeg

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server("orientation", port, "--http-workers", "2", "--max-batch-size", "8", "--backend", backend)
    try:
        wait_ready(proc, base, timeout_s=120)
        angles = [0, 90, 180, 270]
        answers = [httpx.post(f"{base}/predict", json={"image": b64(jpeg(angle=a, seed=a))}, timeout=30)
                   for a in angles]
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        right = sum(r.json()["angle"] == a for r, a in zip(answers, angles, strict=True))
        assert right >= 3
        bad = httpx.post(f"{base}/predict", json={"image": "%%%"}, timeout=30)
        assert bad.status_code == 400 and "base64" in bad.json()["error"]
        stages = httpx.get(f"{base}/stats").json()["stages"]
        assert "preprocess" not in stages and stages["predict"]["count"] >= 1
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
