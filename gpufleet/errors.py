"""gpufleet's errors: one root, a handful of leaves.

    GpufleetError
    ├── ConfigError        bad configuration (names the bad value and the allowed ones)
    ├── DeviceError        a device is missing, unusable or misplaced
    ├── QueueFullError     admission refused: the pool's queue is at ``max_queue``
    ├── DeadlineExceeded   an item's ``timeout_s`` passed before it was served
    ├── WorkerError        the model failed on an item (the original error is ``__cause__``)
    │   └── WorkerDied     the worker serving it died (crash, hang, kill) or no worker is left: not the
    │                      model's verdict on the item; the same item may succeed later
    ├── PoolClosed         the pool is closing or closed and takes no new work
    └── InputError         an item is malformed (wrong shape, dtype, undecodable bytes)

Callers that serve requests map these to statuses in one place (``gpufleet.server``).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeadlineExceeded",
    "DeviceError",
    "GpufleetError",
    "InputError",
    "PoolClosed",
    "QueueFullError",
    "WorkerDied",
    "WorkerError",
]


class GpufleetError(Exception):
    """Root of every error gpufleet raises on purpose. ``retry_after_s``, when set, is the engine's estimate of
    when a retry may succeed (a restart's measured time, the queue's service time); servers send it as
    ``Retry-After``."""

    retry_after_s: float | None = None


class ConfigError(GpufleetError, ValueError):
    """A configuration value is invalid; the message names it and what is allowed."""


class DeviceError(GpufleetError):
    """A device asked for does not exist, cannot be used, or a worker landed on the wrong one."""


class QueueFullError(GpufleetError):
    """The pool already holds ``max_queue`` outstanding items; retry later or shed load."""


class DeadlineExceeded(GpufleetError, TimeoutError):
    """The item's deadline passed before a result was ready."""


class WorkerError(GpufleetError):
    """The model raised while serving this item; the original exception is chained as ``__cause__``."""


class PoolClosed(GpufleetError):
    """The pool is draining or closed and admits no new work."""


class InputError(GpufleetError, ValueError):
    """An input item is malformed: the message says what is wrong and what was expected."""


class WorkerDied(WorkerError):
    """The worker serving this item died (its process crashed, hung or was killed) and the item used up its
    retries, or no worker is left to serve it; unlike a plain ``WorkerError`` this is not the model's answer
    to the item, and a retry later may succeed."""
