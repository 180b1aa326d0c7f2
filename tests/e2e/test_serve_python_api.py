"""``gpufleet.server.serve`` from Python, as a real process: keyword options (as before ServerConfig) and a
ServerConfig both serve, and SIGTERM drains to exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.e2e.serving import ROOT, free_port, wait_ready

ECHO = "tests/server/echo_model.py:Echo"
CALLS = {
    "keywords": "serve({model!r}, port={port}, model_name='m', log_level='WARNING', cpu_devices=1, max_batch_size=2)",
    "config": "serve({model!r}, ServerConfig(port={port}, model_name='m', log_level='warning'), cpu_devices=1)",
}


@pytest.mark.parametrize("form", sorted(CALLS))
def test_python_serve_answers_and_drains(form: str) -> None:
    port = free_port()
    code = "import sys; from gpufleet.server import ServerConfig, serve; sys.exit(" + CALLS[form].format(
        model=ECHO, port=port) + ")"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        assert httpx.get(f"{base}/v2/models/m/ready").status_code == 200
        assert httpx.post(f"{base}/predict", json=[1]).json() == {"echo": [1]}
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
