"""``serve(...)``: build the pool, run uvicorn, and drain gracefully on SIGTERM/SIGINT.

Drain order: readiness turns 503 and new work is refused with 503 while the server keeps listening
(load balancers see it leave); in-flight requests finish, bounded by ``drain_timeout_s``; uvicorn stops
(``gpufleet.server.uvicorn_server``); the pool drains what is left and closes; the process exits 0. A second
signal stops at once.

With ``http_workers > 1`` this process keeps the pool and N front-end processes run uvicorn
(``gpufleet.server.supervisor``); with 1 (the default) uvicorn runs here, on the pool directly.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from gpufleet.config import PoolConfig, env_overrides
from gpufleet.engine import Pool
from gpufleet.errors import ConfigError
from gpufleet.logs import configure as configure_logs
from gpufleet.server.app import create_app
from gpufleet.server.config import ServerConfig, machine_defaults, server_config
from gpufleet.server.frontend import bind_socket
from gpufleet.server.supervisor import serve_multi
from gpufleet.server.uvicorn_server import DrainingServer

__all__ = ["load_model", "pool_config", "serve"]

log = logging.getLogger(__name__)


def load_model(spec: str) -> tuple[Any, str]:
    """``(model for Pool, model name)`` of a spec of :func:`gpufleet.models.resolve.resolve_model` (embedded
    name, ``module:Class``, ``file.py:Class`` or ``*.onnx``). Embedded names stay names: the pool resolves
    them, and a process worker's child rebuilds the model from the name."""
    from gpufleet.models.resolve import EMBEDDED, model_name, resolve_model

    return (spec if spec in EMBEDDED else resolve_model(spec)), model_name(spec)


def pool_config(options: dict[str, Any], environ: dict[str, str] | None = None) -> PoolConfig:
    """PoolConfig from the environment, overridden by the ``options`` that are not ``None`` (given flags)."""
    unknown = set(options) - PoolConfig.names()
    if unknown:
        raise ConfigError(f"unknown pool option(s) {sorted(unknown)}")
    return PoolConfig(**{**env_overrides(environ), **{k: v for k, v in options.items() if v is not None}})


def _gpu_count(config: PoolConfig) -> int:
    """The GPUs the pool will serve on (Ray's are elsewhere: counted as one, for this machine's front ends)."""
    if config.backend == "ray":
        return 1
    from gpufleet.devices import select

    return sum(1 for d in select(config.devices, cpu_devices=config.cpu_devices) if d.is_cuda)


def _machine_settings(options: dict[str, Any], cfg: ServerConfig) -> tuple[PoolConfig, ServerConfig]:
    """The pool config and server config with what no option or environment variable set taken from the
    machine (:func:`machine_defaults`)."""
    config = pool_config(options)
    auto = machine_defaults(_gpu_count(config))
    env = env_overrides()
    pool_auto = {k: v for k, v in auto.items()
                 if k in PoolConfig.names() and options.get(k) is None and k not in env}
    if pool_auto:
        config = replace(config, **pool_auto)
    if cfg.http_workers == 0:
        cfg = replace(cfg, http_workers=auto["http_workers"])
    log.info("serving with %d HTTP front end(s), max batch %d, max wait %g ms%s", cfg.http_workers,
             config.max_batch_size, config.max_wait_ms, " (from the machine)" if pool_auto else "")
    return config, cfg


def serve(model: str = "orientation", server: ServerConfig | None = None, **options: Any) -> int:
    """Serve ``model`` until SIGTERM/SIGINT; returns the exit code (0 after a clean drain).

    ``server`` holds the HTTP options; or give its fields as keywords (``port=9000, http_workers=4``): those
    not given (or ``None``) come from the environment (``GPUFLEET_HTTP_WORKERS``), then the defaults. Keywords
    given beside a ``server`` override its fields. The other ``options`` are :class:`gpufleet.PoolConfig`
    fields; ``None`` values are ignored so environment variables (``GPUFLEET_*``, ``GPU_IDS``,
    ``MAX_BATCH_SIZE``, ...) fill them, and given values win. ``http_workers > 1`` runs that many HTTP
    front-end processes over this process's pool (see ``docs/serving.md``); what neither sets
    (``http_workers``, and on GPUs ``max_batch_size``/``max_wait_ms``) comes from the machine
    (:func:`gpufleet.server.config.machine_defaults`). ``log_format="json"`` logs one
    JSON object per line, request ids included.

    >>> serve("orientation", port=9000, cpu_devices=2)  # doctest: +SKIP
    """
    given = {k: options.pop(k) for k in list(options) if k in ServerConfig.names()}
    if server is None:
        cfg = server_config(given)
    else:
        cfg = replace(server, **{k: v for k, v in given.items() if v is not None})
    configure_logs(cfg.log_level, cfg.log_format)
    if cfg.grpc_port is not None:
        from gpufleet.server.grpc_service import require_grpc

        require_grpc()  # before the pool loads the model: one line naming the extra
    pool_config(options)  # bad pool options first, then an unknown model, then the machine's devices
    target, default_name = load_model(model)  # resolves the spec; the model loads in the Pool below
    config, cfg = _machine_settings(options, cfg)
    # Bind before the model loads (minutes for a large one): a port in use is a ConfigError now, not uvicorn's
    # exit 3 after the load. Bound, not listening: clients are refused, not queued, until uvicorn listens.
    sock = bind_socket(cfg.host, cfg.port, reuse_port=cfg.http_workers > 1)
    try:
        cfg = replace(cfg, port=sock.getsockname()[1])
        cfg = replace(cfg, model_name=cfg.model_name or default_name)
        pool = Pool(target, config=config)
        try:
            if cfg.http_workers > 1:
                return serve_multi(pool, cfg, model, load_model, reserve=sock)
            app = create_app(pool, **cfg.app_options())
            uv = DrainingServer(app, cfg)
            uv.run(sockets=[sock])
            if not uv.started:
                return 1
        finally:
            pool.close(drain=True, timeout=cfg.drain_timeout_s)
    finally:
        sock.close()
    return 0
