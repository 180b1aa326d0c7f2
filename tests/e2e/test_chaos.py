"""Chaos under steady load: ``gpufleet serve --backend process --http-workers 2`` while its worker is killed
(``kill -9``) twice, stopped once (``SIGSTOP``: the heartbeat finds it) and a front end is killed. Every
request whose deadline allows the restart gets 200 with its own answer; only requests on the killed front
end's connections may fail, at the socket."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import httpx
import pytest

from tests.e2e.serving import ROOT, free_port, start_server, wait_ready
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(240)

MODEL = f"{ROOT / 'tests' / 'server' / 'echo_model.py'}:Echo"


def test_kills_under_load_fail_no_request() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(MODEL, port, "--backend", "process", "--http-workers", "2", "--max-batch-size", "8",
                        "--max-wait-ms", "1", "--timeout-s", "60", env={"GPUFLEET_HEARTBEAT_TIMEOUT_S": "2"})
    stop = threading.Event()
    bad: list[str] = []
    ok: list[int] = []
    socket_errors: list[str] = []
    frontends: set[str] = set()

    def client(k: int) -> None:
        n = 0
        with httpx.Client(base_url=base, timeout=60) as c:
            while not stop.is_set():
                n += 1
                item = {"client": k, "n": n}
                try:
                    r = c.post("/predict", json=item)
                except httpx.TransportError as exc:  # a killed front end's connection
                    socket_errors.append(repr(exc))
                    continue
                frontends.add(r.headers.get("x-gpufleet-frontend", ""))
                if r.status_code != 200 or r.json() != {"echo": item}:
                    bad.append(f"{r.status_code} {r.text[:200]}")
                else:
                    ok.append(n)

    def worker_pid() -> int:
        return httpx.get(f"{base}/health", timeout=10).json()["backends"][0]["pid"]

    def served() -> int:
        return len(ok)

    try:
        wait_ready(proc, base)
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for sig in (signal.SIGKILL, signal.SIGKILL, signal.SIGSTOP):
            before = served()
            assert wait_until(lambda b=before: served() > b + 20, 60)  # the worker serves between the failures
            old = worker_pid()
            os.kill(old, sig)
            assert wait_until(lambda o=old: worker_pid() != o, 60)
        def both_seen() -> bool:  # 4 kept-alive connections may all sit on one front end: ask on new ones
            r = httpx.post(f"{base}/predict", json={"client": -1, "n": 0}, timeout=30)
            frontends.add(r.headers.get("x-gpufleet-frontend", ""))
            return len(frontends) == 2

        assert wait_until(both_seen, 30)
        victim = int(sorted(frontends)[0])
        os.kill(victim, signal.SIGKILL)
        before = served()
        assert wait_until(lambda: served() > before + 50, 60)  # the restarted front end and the other serve on
        stop.set()
        for t in threads:
            t.join(90)
        stats = httpx.get(f"{base}/stats", timeout=10).json()
        assert bad == []
        assert stats["restarts"] == 3
        assert stats["errors"] == 0  # nothing failed in the engine: no item answered with an error
        last = stats["per_worker_stats"][0]["last_restart"]
        assert last["total"] > 0 and "spawn_imports" in last
        assert len(stats["per_worker_stats"][0]["restart_history"]) == 3
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
