"""``serve(...)``: build the pool, run uvicorn, and drain gracefully on SIGTERM/SIGINT.

Drain order: readiness turns 503 and new work is refused with 503 while the server keeps listening
(load balancers see it leave); in-flight requests finish, bounded by ``drain_timeout_s``; uvicorn stops;
the pool drains what is left and closes; the process exits 0. A second signal stops at once.

With ``http_workers > 1`` this process keeps the pool and N front-end processes run uvicorn
(``gpufleet.server.supervisor``); with 1 (the default) uvicorn runs here, on the pool directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from types import FrameType
from typing import Any

import uvicorn

from gpufleet.config import PoolConfig, env_overrides
from gpufleet.engine import Pool
from gpufleet.errors import ConfigError
from gpufleet.logs import FORMATS
from gpufleet.logs import configure as configure_logs
from gpufleet.server.app import create_app
from gpufleet.server.base import ServerState

__all__ = ["http_workers_from", "load_model", "pool_config", "serve"]

log = logging.getLogger(__name__)


def load_model(spec: str) -> tuple[Any, str]:
    """``(model for Pool, model name)`` of a spec of :func:`gpufleet.models.resolve.resolve_model` (embedded
    name, ``module:Class``, ``file.py:Class`` or ``*.onnx``). Embedded names stay names: the pool resolves
    them, and a process worker's child rebuilds the model from the name."""
    from gpufleet.models.resolve import EMBEDDED, model_name, resolve_model

    return (spec if spec in EMBEDDED else resolve_model(spec)), model_name(spec)


class _DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains before stopping (and the exit code stays 0)."""

    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None
        self._signalled = False  # not state.draining: a front end may be told to drain before its signal comes

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

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


def pool_config(options: dict[str, Any], environ: dict[str, str] | None = None) -> PoolConfig:
    """PoolConfig from the environment, overridden by the ``options`` that are not ``None`` (given flags)."""
    unknown = set(options) - PoolConfig.names()
    if unknown:
        raise ConfigError(f"unknown pool option(s) {sorted(unknown)}")
    return PoolConfig(**{**env_overrides(environ), **{k: v for k, v in options.items() if v is not None}})


def http_workers_from(value: int | None, environ: dict[str, str] | None = None) -> int:
    """``value``, else ``GPUFLEET_HTTP_WORKERS``, else 1; ``ConfigError`` unless it is an integer >= 1."""
    raw: Any = value if value is not None else (os.environ if environ is None else environ).get(
        "GPUFLEET_HTTP_WORKERS", "1")
    try:
        n = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"http_workers (GPUFLEET_HTTP_WORKERS) must be an integer >= 1, got {raw!r}") from None
    if n < 1:
        raise ConfigError(f"http_workers must be >= 1, got {n}")
    return n


def serve(model: str = "orientation", *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          max_body_mb: float = 16.0, drain_timeout_s: float = 30.0, request_timeout_s: float | None = None,
          log_level: str = "info", model_name: str | None = None, http_workers: int | None = None,
          log_format: str = "text", **pool_options: Any) -> int:
    """Serve ``model`` until SIGTERM/SIGINT; returns the exit code (0 after a clean drain).

    ``pool_options`` are :class:`gpufleet.PoolConfig` fields; ``None`` values are ignored so environment
    variables (``GPUFLEET_*``, ``GPU_IDS``, ``MAX_BATCH_SIZE``, ...) fill them, and given values win.
    ``http_workers`` (default ``GPUFLEET_HTTP_WORKERS`` or 1) > 1 runs that many HTTP front-end processes
    over this process's pool (see ``docs/serving.md``). ``log_format="json"`` logs one JSON object per line,
    request ids included.
    """
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be 0..65535, got {port}")
    if max_body_mb <= 0:
        raise ConfigError(f"max_body_mb must be > 0, got {max_body_mb}")
    if drain_timeout_s < 0:
        raise ConfigError(f"drain_timeout_s must be >= 0, got {drain_timeout_s}")
    if log_format not in FORMATS:
        raise ConfigError(f"log format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    configure_logs(log_level, log_format)
    workers = http_workers_from(http_workers)
    config = pool_config(pool_options)
    target, default_name = load_model(model)
    pool = Pool(target, config=config)
    try:
        if workers > 1:
            from gpufleet.server.frontend import FrontendConfig
            from gpufleet.server.supervisor import serve_multi

            front = FrontendConfig(host=host, port=port, model_name=model_name or default_name, token=token,
                                   max_body_mb=max_body_mb, drain_timeout_s=drain_timeout_s,
                                   request_timeout_s=request_timeout_s, log_level=log_level, log_format=log_format,
                                   model=model)
            return serve_multi(pool, front, workers)
        app = create_app(pool, model_name=model_name or default_name, token=token, max_body_mb=max_body_mb,
                         drain_timeout_s=drain_timeout_s, request_timeout_s=request_timeout_s)
        uv = uvicorn.Config(app, host=host, port=port, loop="auto", http="auto", log_level=log_level,
                            access_log=False, timeout_graceful_shutdown=max(1, int(drain_timeout_s)),
                            lifespan="off", log_config=None if log_format == "json" else uvicorn.config.LOGGING_CONFIG)
        server = _DrainingServer(uv, app.state.gpufleet, drain_timeout_s)
        server.run()
        if not server.started:
            return 1
    finally:
        pool.close(drain=True, timeout=drain_timeout_s)
    return 0
