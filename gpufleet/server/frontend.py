"""One HTTP front-end process of ``gpufleet serve --http-workers N``: uvicorn and the usual app over a
:class:`~gpufleet.engine.remote.RemotePool` connected to the engine process.

Each front end binds its own listening socket to the same host:port with ``SO_REUSEPORT``, so the kernel
spreads new connections over the front ends and none of them is a hop in the path of another.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

import uvicorn

from gpufleet.engine.remote import RemotePool
from gpufleet.errors import ConfigError
from gpufleet.logs import configure as configure_logs
from gpufleet.server.app import create_app
from gpufleet.server.base import ServerState
from gpufleet.server.run import _DrainingServer

__all__ = ["FrontendConfig", "bind_socket", "run_frontend"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FrontendConfig:
    """What every front end needs (pickled once per spawn); ``ipc_path`` is the engine's Unix socket."""

    host: str
    port: int
    model_name: str
    token: str | None = None
    max_body_mb: float = 16.0
    drain_timeout_s: float = 30.0
    request_timeout_s: float | None = None
    log_level: str = "info"
    log_format: str = "text"
    ipc_path: str = ""
    model: str = ""  # the serve MODEL spec: front ends build an unset-up copy to run its preprocess


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` (not listening yet)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--http-workers > 1 needs SO_REUSEPORT (Linux); use --http-workers 1 here")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {host}:{port}: {exc}") from exc
    return sock


def _attach_preprocess(pool: RemotePool, spec: str) -> None:
    """Run the model's ``preprocess`` in this front end, on a few threads, before items go to the engine."""
    from concurrent.futures import ThreadPoolExecutor

    from gpufleet.models.base import optional_stage
    from gpufleet.models.resolve import model_factory
    from gpufleet.server.run import load_model

    template = model_factory(load_model(spec)[0])()  # not set up: frontend_preprocess models need no setup
    hook = getattr(template, "prepare_frontend", None)
    if callable(hook):
        hook(pool.devices)  # the engine's devices, e.g. to leave GPU work (JPEG decoding) to the engine
    pool.preprocess = optional_stage(template, "preprocess")
    pool.preprocess_executor = ThreadPoolExecutor(max(2, min(8, os.cpu_count() or 2)),
                                                  thread_name_prefix="gpufleet-frontend-pre")
    log.info("front end %d runs %s's preprocess", os.getpid(), spec)


class _FrontendServer(_DrainingServer):
    """Connects the remote pool on uvicorn's loop before serving; tells the supervisor once it listens."""

    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout_s: float, pool: RemotePool,
                 listening: Any) -> None:
        super().__init__(config, state, drain_timeout_s)
        self.pool = pool
        self.listening = listening
        self.model_spec = ""

    async def serve(self, sockets: Any = None) -> None:
        await self.pool.connect()
        if self.pool.info.get("frontend_preprocess") and self.model_spec:
            _attach_preprocess(self.pool, self.model_spec)
        # Everything alive now (uvicorn, the model template with torch) leaves the collector's view, as in the
        # engine (PoolConfig.gc_freeze): with torch imported a full collection took ~70 ms, a stall of every
        # request on this front end (W3 c=256 on 1x H200: p99 97-114 ms, engine e2e p99 31-37 ms).
        gc.collect()
        gc.freeze()
        self.pool.on_state = self._on_state
        self.pool.on_lost = self._on_lost
        announce = asyncio.ensure_future(self._announce())
        try:
            await super().serve(sockets)
        finally:
            announce.cancel()
            self.pool.close()

    async def _announce(self) -> None:
        while not self.started:
            await asyncio.sleep(0.01)
        self.listening.set()

    def _on_state(self, pool: RemotePool) -> None:
        if pool.draining:  # the engine process got the signal: readiness turns 503 here at once
            self.state.draining = True

    def _on_lost(self, pool: RemotePool) -> None:
        if not self.should_exit:
            log.error("lost the engine process; front end %d stops", os.getpid())
        self.state.draining = True
        self.should_exit = True


def run_frontend(cfg: FrontendConfig, listening: Any) -> None:
    """Process entry point (spawned): serve until SIGTERM, draining in-flight requests first."""
    try:
        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor only; it forwards SIGTERM to us
    except OSError:
        pass
    configure_logs(cfg.log_level, cfg.log_format, prefix=f"[front end {os.getpid()}] ")
    pool = RemotePool(cfg.ipc_path)
    app = create_app(pool, model_name=cfg.model_name, token=cfg.token, max_body_mb=cfg.max_body_mb,
                     drain_timeout_s=cfg.drain_timeout_s, request_timeout_s=cfg.request_timeout_s,
                     frontend_id=str(os.getpid()))
    uv = uvicorn.Config(app, host=cfg.host, port=cfg.port, loop="auto", http="auto", log_level=cfg.log_level,
                        access_log=False, timeout_graceful_shutdown=max(1, int(cfg.drain_timeout_s)), lifespan="off",
                        log_config=None if cfg.log_format == "json" else uvicorn.config.LOGGING_CONFIG)
    sock = bind_socket(cfg.host, cfg.port)
    server = _FrontendServer(uv, app.state.gpufleet, cfg.drain_timeout_s, pool, listening)
    server.model_spec = cfg.model
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until uvicorn installs its handlers
    server.run(sockets=[sock])
    sys.exit(0 if server.started else 1)
