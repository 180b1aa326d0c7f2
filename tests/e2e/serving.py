"""Starting ``python -m gpufleet serve`` as a real process for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, *args: str, env: dict[str, str] | None = None,
                 new_session: bool = False) -> subprocess.Popen:
    """``gpufleet serve MODEL`` on 127.0.0.1:port with one CPU device; output piped (stderr into stdout).
    ``new_session`` makes it a process-group leader, so a test may signal its whole group."""
    return subprocess.Popen(
        [sys.executable, "-m", "gpufleet", "serve", model, "--port", str(port), "--cpu-devices", "1",
         "--log-level", "warning", *args],
        cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=new_session)


def wait_ready(proc: subprocess.Popen, base: str, headers: dict[str, str] | None = None,
               timeout_s: float = 90) -> None:
    """Until ``/v2/health/ready`` answers 200; fails with the server's output if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            if httpx.get(f"{base}/v2/health/ready", headers=headers, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("server did not become ready")
