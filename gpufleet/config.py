"""Pool configuration: one frozen, validated dataclass, and its mapping from environment variables.

Environment variables (``GPUFLEET_*``, plus the seed documents' names as aliases) only fill in values the
caller did not give; explicit arguments and CLI flags always win.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from gpufleet.errors import ConfigError

__all__ = ["BACKENDS", "BALANCERS", "ENV_NAMES", "MPS_MODES", "SPARE_MODES", "EnvValue", "PoolConfig",
           "env_choice", "env_overrides", "with_options"]

BALANCERS = ("round-robin", "queue-depth", "speed")
BACKENDS = ("thread", "process", "ray")
MPS_MODES = ("auto", "on", "off")
SPARE_MODES = ("imports", "warm")  # spare_process as a string; True means "imports"


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    """How a :class:`gpufleet.Pool` places workers, batches items and admits work.

    ``max_batch_size=0`` probes, per worker, the largest batch (up to ``max_probe_batch``) that fits and
    still raises throughput. ``max_wait_ms`` is how long a worker waits, after the first item of a batch
    arrived, for more items. ``max_queue`` bounds outstanding items (``QueueFullError`` beyond it);
    ``timeout_s`` is the default per-item deadline (``None``: no deadline). ``gc_freeze`` moves every object
    alive once the workers are set up (modules, weights, the interpreter's imports) out of the garbage
    collector's view (``gc.freeze()``), so its periodic full passes stop scanning them: with torch imported
    that doubles the engine's items/s and removes collector pauses from the latency tail.
    A model's ``preprocess`` runs on ``preprocess_threads`` pool threads (default: one per core, 2–32), or in
    the submitting thread once it is measured cheaper than that hand-off (under 30 µs per item).
    ``pipeline_depth`` is how many batches a worker keeps launched on its device at once (models with
    ``launch``/``collect``); a process worker is sent one batch more, so the next one waits in its pipe.

    ``backend="process"`` (one spawned process per worker, see docs/processes.md) adds: ``max_retries``
    (times an item is retried after the process serving it died), ``batch_timeout_s`` (a batch running
    longer kills the process; ``None``: no limit), ``heartbeat_timeout_s``, ``start_timeout_s`` (setup),
    ``restart_backoff_s``/``restart_backoff_max_s`` (exponential from the second failure in a row, with
    jitter; the first restarts at once; a start-up killed by a signal restarts at once, up to 3 in a row),
    ``spare_process`` (keep one spare child per worker to take over at a restart: ``True``/``"imports"``:
    spawned and imported, no device touched; ``"warm"``: the model set up on its device too, a second copy
    in device memory, so a restart is the hand-over; ``False``: none; ``None``: ``"imports"`` for GPU
    workers, none for CPU workers), ``breaker_threshold``
    (failures in a row that open a worker's circuit) and ``breaker_cooldown_s``, ``mps`` (``"auto"``: note
    whether an MPS daemon runs; ``"on"``: require one; ``"off"``: don't look).

    ``backend="ray"`` (one Ray actor per GPU of a Ray cluster, see docs/cluster.md) uses the same restart
    settings, and ``ray_address`` (``None``: the cluster ``ray.init()`` finds, or a local one; ``"auto"``;
    ``"ray://host:10001"``) and ``ray_nodes`` (node ids or IP addresses to place actors on; ``None``: every
    node with GPUs).
    """

    devices: str | Sequence[int] | None = None
    cpu_devices: int | None = None
    workers_per_device: int = 1
    backend: str = "thread"
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    batch_buckets: tuple[int, ...] | None = None
    balancer: str = "queue-depth"
    max_queue: int = 10_000
    timeout_s: float | None = None
    max_probe_batch: int = 256
    preprocess_threads: int | None = None
    pipeline_depth: int = 2
    allow_degraded: bool = False
    gc_freeze: bool = True
    max_retries: int = 2
    batch_timeout_s: float | None = None
    heartbeat_timeout_s: float = 5.0
    start_timeout_s: float = 600.0
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    spare_process: bool | str | None = None
    breaker_threshold: int = 3
    breaker_cooldown_s: float = 5.0
    mps: str = "auto"
    ray_address: str | None = None
    ray_nodes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.workers_per_device < 1:
            raise ConfigError(f"workers_per_device must be >= 1, got {self.workers_per_device}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; available: {', '.join(BACKENDS)}")
        if self.max_batch_size < 0:
            raise ConfigError(f"max_batch_size must be >= 0 (0 = probe the best size), got {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.balancer not in BALANCERS:
            raise ConfigError(f"unknown balancer {self.balancer!r}; choose one of: {', '.join(BALANCERS)}")
        if self.max_queue < 1:
            raise ConfigError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0 or None, got {self.timeout_s}")
        if self.max_probe_batch < 1:
            raise ConfigError(f"max_probe_batch must be >= 1, got {self.max_probe_batch}")
        if self.pipeline_depth < 1:
            raise ConfigError(f"pipeline_depth must be >= 1, got {self.pipeline_depth}")
        if self.preprocess_threads is not None and self.preprocess_threads < 1:
            raise ConfigError(f"preprocess_threads must be >= 1, got {self.preprocess_threads}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        for name in ("batch_timeout_s",):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0 or None, got {value}")
        for name in ("heartbeat_timeout_s", "start_timeout_s", "restart_backoff_max_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("restart_backoff_s", "breaker_cooldown_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.breaker_threshold < 1:
            raise ConfigError(f"breaker_threshold must be >= 1, got {self.breaker_threshold}")
        if self.spare_process is not None and not isinstance(self.spare_process, bool) \
                and self.spare_process not in SPARE_MODES:
            raise ConfigError(f"spare_process must be True, False, None, 'imports' or 'warm', got "
                              f"{self.spare_process!r}")
        if self.mps not in MPS_MODES:
            raise ConfigError(f"unknown mps mode {self.mps!r}; choose one of: {', '.join(MPS_MODES)}")
        if self.batch_buckets is not None:
            buckets = tuple(sorted(set(int(b) for b in self.batch_buckets)))
            if not buckets or buckets[0] < 1:
                raise ConfigError(f"batch_buckets must be positive sizes, got {self.batch_buckets}")
            object.__setattr__(self, "batch_buckets", buckets)

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


C = TypeVar("C")


def with_options(base: C, options: dict[str, Any], what: str) -> C:
    """``base`` (a config dataclass) with ``options`` applied: a ``ConfigError`` names unknown options and
    where ``what`` (the config's public name) lists the valid ones."""
    unknown = set(options) - {f.name for f in fields(base)}  # type: ignore[arg-type]
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)}; see {what} for the options")
    return replace(base, **options) if options else base  # type: ignore[type-var]


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean; use true or false")


def _number(name: str, value: str, kind: type) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a valid {kind.__name__}") from None


class EnvValue(str):
    """A string read from an environment variable, carrying the variable's name (``env``), so that the code
    that finally rejects it (``devices.select`` for ``GPU_IDS``) can name the variable in its error."""

    env: str

    def __new__(cls, env: str, value: str) -> EnvValue:
        self = super().__new__(cls, value)
        self.env = env
        return self

    def __reduce__(self) -> Any:  # pickled into process workers' children with its name
        return (EnvValue, (self.env, str(self)))


def env_choice(name: str, choices: tuple[str, ...]) -> str:
    """The value of the environment variable ``name`` (case and spaces ignored; unset or empty: ``choices[0]``),
    or ConfigError naming the choices."""
    value = os.environ.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        quoted = [repr(c) for c in choices]
        raise ConfigError(f"{name} must be {', '.join(quoted[:-1])} or {quoted[-1]}, got {value!r}")
    return value


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """PoolConfig fields set by the environment: ``GPUFLEET_*`` first, then the seeds' aliases.

    ``GPU_IDS``/``GPUFLEET_GPUS`` → devices, ``MAX_BATCH_SIZE``, ``MAX_BATCH_WAIT_TIME`` (seconds) →
    max_wait_ms, ``GPU_LOAD_BALANCE_STRATEGY`` → balancer, ``ENABLE_BATCHING=false`` → max_batch_size 1.
    A value the config rejects raises a ``ConfigError`` that names the variable
    (``GPU_LOAD_BALANCE_STRATEGY=fastest: unknown balancer ...``).
    """
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    source: dict[str, tuple[str, str]] = {}

    def first(*names: str) -> tuple[str, str] | None:
        for n in names:
            if env.get(n, "").strip():
                return n, env[n].strip()
        return None

    if hit := first("GPUFLEET_GPUS", "GPU_IDS"):
        out["devices"] = EnvValue(*hit)
    if hit := first("GPUFLEET_CPU_DEVICES"):
        out["cpu_devices"] = _number(*hit, int)
    if hit := first("GPUFLEET_WORKERS_PER_DEVICE"):
        out["workers_per_device"] = _number(*hit, int)
    if hit := first("GPUFLEET_BACKEND"):
        out["backend"] = hit[1].lower()
    if hit := first("GPUFLEET_RAY_ADDRESS"):  # ray.init() itself reads RAY_ADDRESS when this is unset
        out["ray_address"] = hit[1]
    if hit := first("GPUFLEET_MAX_BATCH_SIZE", "MAX_BATCH_SIZE"):
        out["max_batch_size"] = _number(*hit, int)
    if hit := first("GPUFLEET_MAX_WAIT_MS"):
        out["max_wait_ms"] = _number(*hit, float)
    elif hit := first("MAX_BATCH_WAIT_TIME"):
        out["max_wait_ms"] = _number(*hit, float) * 1000.0
    if hit := first("GPUFLEET_BALANCER", "GPU_LOAD_BALANCE_STRATEGY"):
        out["balancer"] = hit[1].lower().replace("_", "-")
    if hit := first("GPUFLEET_MAX_QUEUE"):
        out["max_queue"] = _number(*hit, int)
    if hit := first("GPUFLEET_TIMEOUT_S"):
        out["timeout_s"] = _number(*hit, float)
    if hit := first("GPUFLEET_HEARTBEAT_TIMEOUT_S"):
        out["heartbeat_timeout_s"] = _number(*hit, float)
    if hit := first("GPUFLEET_SPARE_PROCESS"):
        mode = hit[1].lower()
        try:
            out["spare_process"] = mode if mode in SPARE_MODES else _bool(*hit)
        except ConfigError:
            raise ConfigError(f"{hit[0]}={hit[1]!r}: use 0 (no spare), 1 or imports (imports-only), or warm "
                              "(the model set up in the spare too)") from None
    if (hit := first("GPUFLEET_ENABLE_BATCHING", "ENABLE_BATCHING")) and not _bool(*hit):
        out["max_batch_size"] = 1
    for key, names in ENV_NAMES.items():
        if key in out and key != "devices" and (hit := first(*names)):
            source[key] = hit
    for key, (name, raw) in source.items():  # each value alone, so the error names its own variable
        try:
            PoolConfig(**{key: out[key]})
        except ConfigError as exc:
            raise ConfigError(f"{name}={raw}: {exc}") from None
    return out


ENV_NAMES: dict[str, tuple[str, ...]] = {
    "devices": ("GPUFLEET_GPUS", "GPU_IDS"),
    "ray_address": ("GPUFLEET_RAY_ADDRESS",),
    "cpu_devices": ("GPUFLEET_CPU_DEVICES",),
    "workers_per_device": ("GPUFLEET_WORKERS_PER_DEVICE",),
    "backend": ("GPUFLEET_BACKEND",),
    "max_batch_size": ("GPUFLEET_MAX_BATCH_SIZE", "MAX_BATCH_SIZE", "GPUFLEET_ENABLE_BATCHING", "ENABLE_BATCHING"),
    "max_wait_ms": ("GPUFLEET_MAX_WAIT_MS", "MAX_BATCH_WAIT_TIME"),
    "balancer": ("GPUFLEET_BALANCER", "GPU_LOAD_BALANCE_STRATEGY"),
    "max_queue": ("GPUFLEET_MAX_QUEUE",),
    "timeout_s": ("GPUFLEET_TIMEOUT_S",),
    "heartbeat_timeout_s": ("GPUFLEET_HEARTBEAT_TIMEOUT_S",),
    "spare_process": ("GPUFLEET_SPARE_PROCESS",),
}
"""The environment variables that may set each PoolConfig field, first one read first (and the one named in an
error); ``ENABLE_BATCHING=false`` sets ``max_batch_size`` to 1 and ``MAX_BATCH_WAIT_TIME`` is in seconds."""
