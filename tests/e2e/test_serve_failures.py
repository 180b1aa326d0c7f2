"""``gpufleet serve`` as a real process: cheap checks before the model loads, and failures in its log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.e2e.serving import ROOT, free_port, start_server, wait_ready


@pytest.mark.parametrize("http_workers", ["1", "2"])
def test_port_in_use_fails_before_the_model_loads(http_workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "gpufleet", "serve", "tests/server/slow_model.py:SlowSetup", "--port", str(port),
             "--cpu-devices", "1", "--http-workers", http_workers], cwd=ROOT, capture_output=True, text=True,
            timeout=120, env={**os.environ, "SLOW_SETUP_S": "60"})
        took = time.monotonic() - t0
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "in use" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert took < 30, f"took {took:.1f}s: the 60 s setup ran before the port check"


@pytest.mark.parametrize("layout", [("--backend", "process"), ("--http-workers", "2")])
def test_model_failure_is_logged_as_json_with_the_model_traceback(layout: tuple[str, str]) -> None:
    """A process worker's child traceback, or the engine's traceback seen from an HTTP front end."""
    port = free_port()
    proc = start_server("tests/server/slow_model.py:Failing", port, *layout, "--log-format", "json",
                        "--max-batch-size", "1")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        for i in range(3):
            r = httpx.post(f"{base}/predict", json="boom", headers={"X-Request-Id": f"child-{i}"}, timeout=30)
            assert r.status_code == 500
        assert httpx.post(f"{base}/predict", json="fine", timeout=30).status_code == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    failed = [d for d in lines if d.get("status") == 500]
    processes = int(layout[1]) if layout[0] == "--http-workers" else 1  # each front end logs its first in full
    assert 1 <= len(failed) <= processes, out  # the others are counted, not printed
    assert not [d for d in lines if "ready" in d["message"] and "503" in d["message"]], out  # probes are no failures
    d = failed[0]
    assert d["request_id"] == "child-0" and "boom" in d["error"] and d["level"] == "error"
    counted = sum(x["repeats"] for x in lines if "more like it" in x["message"])
    assert counted + len(failed) == 3, out  # the counts still pending come out when the server stops
    assert "RemoteTraceback" in d["exc"] and "slow_model.py" in d["exc"] and 'raise RuntimeError("boom")' in d["exc"]
