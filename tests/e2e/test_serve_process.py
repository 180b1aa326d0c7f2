"""``gpufleet serve --backend process`` with a model from a file: serves, survives kill -9 of its worker,
and drains cleanly when SIGTERM reaches the whole process group (as systemd and `timeout` send it)."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.e2e.serving import ROOT, free_port, start_server, wait_ready

MODEL = f"{ROOT / 'tests' / 'server' / 'slow_model.py'}:SlowModel"


@pytest.mark.timeout(180)
def test_process_backend_server_survives_a_killed_worker_and_drains_on_group_sigterm() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(MODEL, port, "--backend", "process", env={"SLOW_MODEL_S": "0.01"}, new_session=True)
    try:
        wait_ready(proc, base, timeout_s=120)
        assert httpx.post(f"{base}/predict", json={"x": 1}, timeout=30).json() == {"echo": {"x": 1}}
        pid = httpx.get(f"{base}/health").json()["backends"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:  # the worker comes back; requests meanwhile get an answer (200 or 503), never hang
            r = httpx.post(f"{base}/predict", json={"x": 2}, timeout=30)
            if r.status_code == 200:
                break
            assert r.status_code == 503 and time.monotonic() < deadline, r.text
            time.sleep(0.1)
        backend = httpx.get(f"{base}/health").json()["backends"][0]
        assert backend["pid"] != pid and backend["restarts"] >= 1
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker process get it at once
        assert proc.wait(60) == 0
        out = proc.communicate()[0]
        assert "restarting" not in out.split("draining", 1)[-1]  # no restart during the drain
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
