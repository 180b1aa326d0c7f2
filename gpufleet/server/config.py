"""Server configuration: one frozen, validated dataclass, and its mapping from environment variables.

It lives in the server package, not beside :class:`gpufleet.PoolConfig` in ``gpufleet/config.py``: that
module is the engine's (imported by ``Pool`` on every install), and these options only mean something
where uvicorn runs. Flags and keyword arguments that are given win over the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from gpufleet.errors import ConfigError
from gpufleet.logs import FORMATS

__all__ = ["ENV_NAMES", "LOG_LEVELS", "ServerConfig", "env_overrides", "machine_defaults", "server_config"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's names


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """How ``gpufleet serve`` listens, authenticates, bounds requests, logs and drains.

    ``token`` requires ``Authorization: Bearer <token>`` (not on ``/health``, ``/v2/health/live``);
    ``max_body_mb`` bounds request bodies (413 beyond); ``drain_timeout_s`` bounds the drain at SIGTERM;
    ``request_timeout_s`` is the per-item deadline (default: the pool's ``timeout_s``); ``model_name`` is
    the name under ``/v2/models/`` (``None``: the model's own); ``http_workers > 1`` runs that many HTTP
    front-end processes over the one engine process (docs/serving.md), ``0`` (the default) picks the count from
    the machine (:func:`machine_defaults`); ``grpc_port`` also serves KServe v2 gRPC there (``None``: off;
    needs the ``grpc`` extra).

    >>> ServerConfig(port=9000, http_workers=4).host
    '127.0.0.1'
    """

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_body_mb: float = 16.0
    drain_timeout_s: float = 30.0
    request_timeout_s: float | None = None
    model_name: str | None = None
    http_workers: int = 0
    grpc_port: int | None = None
    log_level: str = "info"
    log_format: str = "text"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if self.max_body_mb <= 0:
            raise ConfigError(f"max_body_mb must be > 0, got {self.max_body_mb}")
        if self.drain_timeout_s < 0:
            raise ConfigError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
        if self.request_timeout_s is not None and self.request_timeout_s <= 0:
            raise ConfigError(f"request_timeout_s must be > 0 or None, got {self.request_timeout_s}")
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise ConfigError(f"grpc_port must be 0..65535 or None, got {self.grpc_port}")
        if self.http_workers < 0:
            raise ConfigError(f"http_workers must be >= 1 (0: from the machine), got {self.http_workers}")
        level = self.log_level.lower()
        if level not in LOG_LEVELS:
            raise ConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        object.__setattr__(self, "log_level", level)
        if self.log_format not in FORMATS:
            raise ConfigError(f"log format must be one of {', '.join(FORMATS)}, got {self.log_format!r}")

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def app_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`gpufleet.server.create_app` that this config sets."""
        options = {"token": self.token, "max_body_mb": self.max_body_mb, "drain_timeout_s": self.drain_timeout_s,
                   "request_timeout_s": self.request_timeout_s}
        if self.model_name is not None:
            options["model_name"] = self.model_name
        return options


ENV_NAMES: dict[str, tuple[str, ...]] = {"http_workers": ("GPUFLEET_HTTP_WORKERS",),
                                          "grpc_port": ("GPUFLEET_GRPC_PORT",)}
"""The environment variables that may set each ServerConfig field (``GPUFLEET_TOKEN`` is ``--token``'s)."""


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """ServerConfig fields set by the environment: ``GPUFLEET_HTTP_WORKERS`` → http_workers,
    ``GPUFLEET_GRPC_PORT`` → grpc_port.

    (``GPUFLEET_TOKEN`` is read by the CLI's ``--token`` flag only.)
    """
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    raw = env.get("GPUFLEET_HTTP_WORKERS", "").strip()
    if raw:
        try:
            out["http_workers"] = int(raw)
        except ValueError:
            out["http_workers"] = 0
        if out["http_workers"] < 1:  # unset it to let the machine pick
            raise ConfigError(f"http_workers (GPUFLEET_HTTP_WORKERS) must be an integer >= 1, got {raw!r}")
    raw = env.get("GPUFLEET_GRPC_PORT", "").strip()
    if raw:
        try:
            out["grpc_port"] = int(raw)
        except ValueError:
            raise ConfigError(f"grpc_port (GPUFLEET_GRPC_PORT) must be a port number, got {raw!r}") from None
    return out


def server_config(options: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> ServerConfig:
    """ServerConfig from the environment, overridden by the ``options`` that are not ``None`` (given flags)."""
    unknown = set(options) - ServerConfig.names()
    if unknown:
        raise ConfigError(f"unknown server option(s) {sorted(unknown)}")
    return ServerConfig(**{**env_overrides(environ), **{k: v for k, v in options.items() if v is not None}})


# The batch settings of `gpufleet serve` on GPUs when neither a flag nor the environment sets them: measured on
# one H200 serving ResNet-50 JPEGs at c=256 with 8 front ends (`gpufleet tune`, 2026-12-05), batch 64 / 2 ms
# served 11,001 req/s (p99 40 ms) against 9,213 (p99 51 ms) at batch 128 and 9,825 at 32; the pool's 32 / 5 ms
# with one front end served 2,638-2,727 (2026-12-04).
GPU_SERVE_BATCH = {"max_batch_size": 64, "max_wait_ms": 2.0}
FRONTENDS_PER_GPU = 8  # the best count measured on 16 cores + 1 H200 (2026-12-04)


def machine_defaults(gpus: int, cores: int | None = None) -> dict[str, Any]:
    """What ``gpufleet serve`` uses for the options that no flag, keyword or environment variable set, from
    the machine: ``http_workers`` = ``min(8 × gpus, cores // 2)``, at least 1, and 1 when the engine serves
    on CPU devices (``gpus == 0``: its workers need those cores) or without ``SO_REUSEPORT``; on GPUs also
    ``max_batch_size=64`` and ``max_wait_ms=2``. ``cores`` defaults to the CPUs this process may run on.

    >>> machine_defaults(gpus=1, cores=16)
    {'http_workers': 8, 'max_batch_size': 64, 'max_wait_ms': 2.0}
    >>> machine_defaults(gpus=0, cores=2)
    {'http_workers': 1}
    """
    import socket

    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if gpus <= 0 or not hasattr(socket, "SO_REUSEPORT"):
        return {"http_workers": 1}
    return {"http_workers": max(1, min(FRONTENDS_PER_GPU * gpus, cores // 2)), **GPU_SERVE_BATCH}
