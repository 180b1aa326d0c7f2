"""The worker-backend interface: what the pool needs of one worker, and the one factory that builds them.

A backend turns a model and a :class:`~gpufleet.config.PoolConfig` into workers, one (or
``workers_per_device``) per device. Every worker has its own batcher, which the pool fills; the worker takes
batches from it, runs :class:`~gpufleet.engine.step.BatchStep` wherever the backend runs models (a thread of
this process, a child process, a Ray actor) and answers each item through its own ``resolve``/``fail``. The
pool hears back only through the :class:`WorkerHooks` it passed in: no side reaches into the other's privates.

Backends are chosen by name (``Pool(backend=...)``); :func:`register_backend` adds one.

    thread   gpufleet.engine.thread    one thread per worker in this process
    process  gpufleet.engine.process   one spawned child per worker, pinned to its GPU
    ray      gpufleet.ray              one Ray actor per GPU anywhere in a Ray cluster (``gpufleet[ray]``)
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gpufleet.errors import ConfigError

if TYPE_CHECKING:
    from gpufleet.config import PoolConfig
    from gpufleet.devices.device import Device
    from gpufleet.engine.batcher import Batcher
    from gpufleet.engine.request import Request
    from gpufleet.engine.stats import WorkerStats
    from gpufleet.errors import GpufleetError

__all__ = ["Backend", "Fleet", "Worker", "WorkerHooks", "backend_names", "make_fleet", "register_backend"]


@dataclass(frozen=True)
class WorkerHooks:
    """The pool's side of the interface, passed to every worker at construction."""

    done: Callable[[Worker, int], None]
    """``n`` of the worker's items were answered (result or error): their queue slots are free."""
    state: Callable[[], None]
    """The worker went up or down, or its circuit breaker changed: the pool recomputes its routes."""
    requeue: Callable[[Worker, list[Request]], list[Request]]
    """Move items of a worker that died to other healthy workers; returns those nobody else can take."""
    executor: Executor
    """The pool's CPU threads (preprocess, postprocess, callbacks)."""


class Worker(Protocol):
    """One model copy on one device, as the pool sees it (:class:`gpufleet.engine.worker.BaseWorker` is the
    shared implementation of the bookkeeping)."""

    index: int
    device: Device
    name: str
    batcher: Batcher  # the pool puts items in; the worker takes batches out
    stats: WorkerStats
    outstanding: int  # items routed here and not yet answered; guarded by the pool's lock
    item_time: float  # seconds per item, moving mean (the speed balancer's estimate)
    enabled: bool  # the operator's switch (``Pool.set_enabled``)
    error: BaseException | None  # why it is not serving (setup failure, crash)
    ready: threading.Event  # set once its first start-up finished, well or not
    max_batch: int
    preprocess: Callable[[Any], Any] | None  # not None: the pool runs the model's preprocess before ``put``

    @property
    def model(self) -> Any:
        """A model instance for metadata (not to be called)."""
        ...

    @property
    def healthy(self) -> bool:
        """Serving now: set up, not restarting, circuit closed."""
        ...

    @property
    def returning(self) -> bool:
        """Not serving now but being brought back (a restart): the pool holds items for it."""
        ...

    def back_in_s(self) -> float | None:
        """Seconds until it is expected to serve (0: it does; ``None``: it is not coming back)."""
        ...

    def start(self) -> None: ...

    def join(self, timeout: float | None = None) -> None:
        """Stop once the batcher (closed by the pool) is drained, and release everything."""
        ...

    def fail(self, reqs: list[Request], err: GpufleetError, cause: BaseException | None = None) -> None:
        """Answer ``reqs`` (routed here) with ``err``, exactly once each."""
        ...

    def fail_pending(self, err: GpufleetError) -> None:
        """Fail what is still queued in the batcher."""
        ...

    def placement(self) -> dict[str, Any]:
        """Where the copy really runs (``weights_on``, ``context_on``, ``pid``, ``node``…), for logs and stats."""
        ...

    def describe(self) -> dict[str, Any]:
        """The worker's row in ``stats()["per_worker_stats"]``."""
        ...

    def health_extra(self) -> dict[str, Any] | None:
        """More fields for its ``health()`` row (pid, breaker state, restarts), or None."""
        ...


@dataclass
class Fleet:
    """What a backend built: the devices it chose, a worker per device (or several), and what the pool
    reports about them."""

    devices: list[Device]
    workers: list[Worker]
    mps: dict[str, Any] | None = None  # MPS status, for backends that run one process per worker
    grow: Callable[[int], tuple[list[Device], list[Worker]]] | None = None
    """For backends whose devices can appear later (Ray nodes that join): the devices found since, and their
    workers (not started), numbered from the given worker count; ``None``: the devices never change."""


class Backend(Protocol):
    def __call__(self, model: Any, config: PoolConfig, hooks: WorkerHooks) -> Fleet: ...


_BACKENDS: dict[str, str | Backend] = {
    "thread": "gpufleet.engine.thread:make_fleet",
    "process": "gpufleet.engine.process:make_fleet",
    "ray": "gpufleet.ray.backend:make_fleet",  # imported only when chosen: ray stays an optional extra
}


def register_backend(name: str, backend: str | Backend) -> None:
    """Add a backend: a callable ``(model, config, hooks) -> Fleet`` or its ``"module:function"``
    (imported only when used, so an optional dependency stays optional)."""
    _BACKENDS[name] = backend


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def make_fleet(model: Any, config: PoolConfig, hooks: WorkerHooks) -> Fleet:
    """Choose the devices and build the workers of ``config.backend`` (not started)."""
    backend = _BACKENDS.get(config.backend)
    if backend is None:
        raise ConfigError(f"unknown backend {config.backend!r}; choose one of: {', '.join(backend_names())}")
    if isinstance(backend, str):
        module, _, attr = backend.partition(":")
        backend = _BACKENDS[config.backend] = getattr(importlib.import_module(module), attr)
    return backend(model, config, hooks)
