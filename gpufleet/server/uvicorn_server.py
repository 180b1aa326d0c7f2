"""uvicorn as gpufleet runs it: the one place that builds uvicorn's ``Config`` from a :class:`ServerConfig`,
and a ``uvicorn.Server`` that drains on the first SIGTERM/SIGINT.

Used by ``serve()`` (uvicorn in the engine process) and by every HTTP front end of ``--http-workers N``.
(Not named ``uvicorn.py``: ``from gpufleet.server import uvicorn`` would then give the third-party module
that the package's ``__init__`` imports to check the install.)
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from gpufleet.server.config import ServerConfig

__all__ = ["DrainingServer", "uvicorn_config"]

log = logging.getLogger(__name__)


def uvicorn_config(app: Starlette, cfg: ServerConfig) -> uvicorn.Config:
    """uvicorn's Config for ``app``: no access log, no lifespan, graceful shutdown bounded by the drain timeout;
    ``log_format="json"`` leaves logging to :func:`gpufleet.logs.configure`."""
    return uvicorn.Config(app, host=cfg.host, port=cfg.port, loop="auto", http="auto", log_level=cfg.log_level,
                          access_log=False, timeout_graceful_shutdown=max(1, int(cfg.drain_timeout_s)),
                          lifespan="off",
                          log_config=None if cfg.log_format == "json" else uvicorn.config.LOGGING_CONFIG)


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains before stopping (and the exit code stays 0).

    Drain: ``app.state.gpufleet.draining`` turns readiness and new work to 503 while the server keeps
    listening; in-flight requests finish, bounded by ``cfg.drain_timeout_s``; then uvicorn stops.
    A second signal stops at once.
    """

    def __init__(self, app: Starlette, cfg: ServerConfig) -> None:
        super().__init__(uvicorn_config(app, cfg))
        self.state = app.state.gpufleet
        self.failures = getattr(app.state, "failures", None)
        self.drain_timeout_s = cfg.drain_timeout_s
        self.grpc_port = cfg.grpc_port
        self.grpc_host = cfg.host
        self.grpc_reuse_port = cfg.http_workers > 1  # the front ends of --http-workers N share the port
        self.grpc: Any = None  # the grpc.aio server beside uvicorn, with --grpc-port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None
        self._signalled = False  # not state.draining: a front end may be told to drain before its signal comes

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        if self.grpc_port is not None:  # KServe v2 gRPC on this loop, over the same state (grpc_service.py)
            from gpufleet.server.grpc_service import start_grpc

            self.grpc = await start_grpc(self.state, self.grpc_host, self.grpc_port, reuse_port=self.grpc_reuse_port)
        try:
            await super().serve(sockets)
        finally:
            if self.grpc is not None:
                await self.grpc.stop(1.0)  # the drain already waited for gRPC calls in flight (state.inflight)
            if self.failures is not None:
                self.failures.flush()  # "N more like it" still counted: say it before the process ends

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's handler: it would also re-raise the signal after shutdown (exit status -15).
        if self._signalled or self._loop is None:
            self.should_exit = True
            if sig == signal.SIGINT and self._signalled:
                self.force_exit = True
            return
        self._signalled = True
        self.state.draining = True
        log.warning("signal %s: draining (%d request(s) in flight, up to %.0fs)",
                    signal.Signals(sig).name, self.state.inflight, self.drain_timeout_s)
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        if not await self.state.wait_idle(self.drain_timeout_s):
            log.warning("drain timeout: %d request(s) still in flight", self.state.inflight)
        self.should_exit = True
