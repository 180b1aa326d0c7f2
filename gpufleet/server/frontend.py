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
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette

from gpufleet.engine.remote import RemotePool
from gpufleet.errors import ConfigError
from gpufleet.logs import configure as configure_logs
from gpufleet.server.app import create_app
from gpufleet.server.config import ServerConfig
from gpufleet.server.uvicorn_server import DrainingServer

__all__ = ["ModelLoader", "bind_socket", "run_frontend"]

log = logging.getLogger(__name__)

ModelLoader = Callable[[str], tuple[Any, str]]  # serve's MODEL spec -> (model for Pool, name): run.load_model


def bind_socket(host: str, port: int, *, reuse_port: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not listening yet: connections are refused, not queued, until
    uvicorn listens), with ``SO_REUSEPORT`` for the front ends' group when ``reuse_port``. A port in use or
    an address that cannot be bound raises :class:`ConfigError` (``gpufleet serve``: one ``error:`` line)."""
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--http-workers > 1 needs SO_REUSEPORT (Linux); use --http-workers 1 here")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own bind
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {host}:{port}: {exc}") from exc
    return sock


def _attach_preprocess(pool: RemotePool, spec: str, load_model: ModelLoader) -> None:
    """Run the model's ``preprocess`` in this front end, on a few threads, before items go to the engine."""
    from concurrent.futures import ThreadPoolExecutor

    from gpufleet.models.base import optional_stage
    from gpufleet.models.resolve import frontend_model

    template = frontend_model(load_model(spec)[0])  # not set up: frontend_preprocess models need no setup
    hook = getattr(template, "prepare_frontend", None)
    if callable(hook):
        hook(pool.devices)  # the engine's devices, e.g. to leave GPU work (JPEG decoding) to the engine
    pool.preprocess = optional_stage(template, "preprocess")
    pool.preprocess_executor = ThreadPoolExecutor(max(2, min(8, os.cpu_count() or 2)),
                                                  thread_name_prefix="gpufleet-frontend-pre")
    log.info("front end %d runs %s's preprocess", os.getpid(), spec)


class _FrontendServer(DrainingServer):
    """Connects the remote pool on uvicorn's loop before serving; tells the supervisor once it listens."""

    def __init__(self, app: Starlette, cfg: ServerConfig, pool: RemotePool, listening: Any, model: str,
                 load_model: ModelLoader) -> None:
        super().__init__(app, cfg)
        self.pool = pool
        self.listening = listening
        self.model_spec = model
        self.load_model = load_model

    async def serve(self, sockets: Any = None) -> None:
        await self.pool.connect()
        if self.pool.info.get("frontend_preprocess") and self.model_spec:
            _attach_preprocess(self.pool, self.model_spec, self.load_model)
        # Everything alive now (uvicorn, the model template with torch) leaves the collector's view, as in the
        # engine (PoolConfig.gc_freeze): with torch imported a full collection took ~70 ms, a stall of every
        # request on this front end (JPEGs over HTTP, 256 clients, 1x H200: p99 97-114 ms, engine e2e p99 31-37 ms).
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


def run_frontend(cfg: ServerConfig, ipc_path: str, model: str, load_model: ModelLoader, listening: Any) -> None:
    """Process entry point (spawned): serve until SIGTERM, draining in-flight requests first.

    ``cfg`` is the engine's, with the port resolved and ``model_name`` set; ``ipc_path`` is the engine's Unix
    socket; ``model`` is the serve MODEL spec and ``load_model`` loads it (the front end builds an unset-up
    copy to run its preprocess; passed in, so that this module needs nothing from ``run``).
    """
    try:
        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor only; it forwards SIGTERM to us
    except OSError:
        pass
    configure_logs(cfg.log_level, cfg.log_format, prefix=f"[front end {os.getpid()}] ")
    pool = RemotePool(ipc_path)
    app = create_app(pool, **cfg.app_options(), frontend_id=str(os.getpid()))
    sock = bind_socket(cfg.host, cfg.port)
    server = _FrontendServer(app, cfg, pool, listening, model, load_model)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until uvicorn installs its handlers
    server.run(sockets=[sock])
    sys.exit(0 if server.started else 1)
