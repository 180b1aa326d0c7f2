"""A real ``gpufleet serve`` in a child process on 127.0.0.1, for tools that measure the served path.

Used by ``gpufleet bench --http`` and ``gpufleet tune``: start the server with the given flags, wait until
``/v2/health/ready`` answers, and stop it with SIGTERM (a drain) when done.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from gpufleet.errors import GpufleetError

__all__ = ["ServedModel", "free_port"]

READY_TIMEOUT_S = 600.0  # model load, warm-up and CUDA-graph capture of every bucket on a cold machine


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServedModel:
    """``with ServedModel("resnet50", ["--max-batch-size", "64"]) as s: run_load(s.url + "/predict", ...)``.

    ``flags`` are ``gpufleet serve`` flags (host and port are chosen here; ``model=None`` leaves the model to a
    ``--config`` file among them). Entering starts the server and
    waits until it is ready (``GpufleetError`` with the log's last lines when it exits first, or after
    ``ready_timeout_s``); leaving drains it with SIGTERM. ``startup_s`` is how long it took to become ready.
    """

    def __init__(self, model: str | None, flags: list[str] | None = None, *, ready_timeout_s: float = READY_TIMEOUT_S,
                 env: dict[str, str] | None = None) -> None:
        self.model, self.flags, self.ready_timeout_s, self.env = model, list(flags or []), ready_timeout_s, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_s = 0.0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        assert self._tmp is not None
        return Path(self._tmp.name) / "serve.log"

    def log_tail(self, lines: int = 3) -> str:
        """The last ``lines`` lines of the server's output, joined by `` | ``."""
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> ServedModel:
        self._tmp = tempfile.TemporaryDirectory(prefix="gpufleet-served-")
        cmd = [sys.executable, "-m", "gpufleet", "serve", *([self.model] if self.model else []), "--host",
               "127.0.0.1", "--port", str(self.port), *self.flags]
        t0 = time.monotonic()
        with open(self.log, "wb") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _wait_ready(self) -> None:
        import httpx

        assert self._proc is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise GpufleetError(f"the server exited with code {self._proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise GpufleetError(f"the server was not ready after {self.ready_timeout_s:.0f}s: {self.log_tail()}")

    def stats(self) -> dict[str, Any]:
        """The server's ``/stats`` (empty when it cannot be read)."""
        import httpx

        try:
            return httpx.get(f"{self.url}/stats", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return {}

    def configure(self, *, max_batch_size: int | None = None, max_wait_ms: float | None = None) -> dict[str, Any]:
        """Change the server's batching while it runs (``POST /admin/batching``); ``GpufleetError`` if refused."""
        import httpx

        body = {k: v for k, v in (("max_batch_size", max_batch_size), ("max_wait_ms", max_wait_ms)) if v is not None}
        try:
            r = httpx.post(f"{self.url}/admin/batching", json=body, timeout=10)
        except httpx.HTTPError as exc:
            raise GpufleetError(f"cannot change the server's batching: {exc}") from exc
        if r.status_code != 200:
            raise GpufleetError(f"the server refused the batching {body}: {r.text[:200]}")
        return r.json()

    def close(self) -> None:
        """SIGTERM (the server drains and exits), SIGKILL after a minute; removes the log."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
