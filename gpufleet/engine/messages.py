"""Wire messages between the pool (parent) and a process worker (child): msgspec Structs over a pipe.

Every message is one msgpack frame on a ``multiprocessing`` connection, tagged by its class name. Items and
results ride in ``Batch.items`` / ``Result.outputs`` as msgpack values; numpy arrays, torch CPU tensors and
large ``bytes`` are replaced by :mod:`gpufleet.engine.shm` references (msgpack extension types), so no large
payload is ever pickled.

    parent → child: Batch, Free, Shutdown
    child → parent: Hello (device of the CUDA context, before setup), Ready | SetupFailed, Heartbeat,
                    Progress, Result
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "Batch",
    "ErrorInfo",
    "Free",
    "Heartbeat",
    "Hello",
    "Message",
    "Progress",
    "Ready",
    "Result",
    "SetupFailed",
    "Shutdown",
]


class ErrorInfo(msgspec.Struct, array_like=True, omit_defaults=True):
    """An exception in the child, flattened: ``kind`` is ``input`` (preprocess), ``model`` (predict /
    postprocess), a gpufleet error class name (raised by the model on purpose), or ``sticky`` (a CUDA error
    that poisons the process)."""

    kind: str
    message: str
    type: str = ""
    traceback: str = ""


class Hello(msgspec.Struct, tag=True):
    """Sent once the device is initialised, before ``setup``, so the parent can check the placement."""

    pid: int
    kind: str  # "cuda" | "cpu"
    current_device: int = -1  # torch.cuda.current_device() in the child
    name: str = ""
    uuid: str = ""
    visible: str | None = None  # CUDA_VISIBLE_DEVICES as the child saw it


class Ready(msgspec.Struct, tag=True):
    has_preprocess: bool = False
    has_postprocess: bool = False


class SetupFailed(msgspec.Struct, tag=True):
    error: ErrorInfo


class Heartbeat(msgspec.Struct, tag=True):
    t: float


class Batch(msgspec.Struct, tag=True, omit_defaults=True):
    """Items to serve: ``items``, or, when they are arrays of one shape and dtype, ``stacked`` (one
    ``[n, *shape]`` block in shared memory) and ``items`` empty. ``dropped``: segments the parent unlinked
    since its last batch (the child unmaps them). ``preprocessed``: the model's preprocess already ran on
    every item (in an HTTP front end); the child skips it."""

    id: int
    items: list[Any] = []
    stacked: Any = None
    dropped: list[str] = []
    preprocessed: bool = False


class Free(msgspec.Struct, tag=True):
    """The parent copied these child-owned result segments out; the child may reuse them."""

    segments: list[str]


class Shutdown(msgspec.Struct, tag=True):
    pass


class Progress(msgspec.Struct, tag=True):
    """``report_progress(value, index)`` from inside ``predict``: ``index=None`` means every item of the batch."""

    id: int
    value: Any
    index: int | None = None


class Result(msgspec.Struct, tag=True, omit_defaults=True):
    """One batch done. ``outputs[i]`` is item i's result unless ``errors`` has an entry for i; ``error`` set
    means the whole batch failed (``outputs`` empty). ``segments``: result segments to ``Free`` after reading;
    ``dropped``: segments the child unlinked (the parent closes its mappings)."""

    id: int
    outputs: list[Any] = []
    errors: dict[int, ErrorInfo] = {}
    error: ErrorInfo | None = None
    timings: dict[str, float] = {}
    oom_batch: int = 0  # > 0: the batch ran out of memory at this size and was split
    segments: list[str] = []
    dropped: list[str] = []


Message = Hello | Ready | SetupFailed | Heartbeat | Batch | Free | Shutdown | Progress | Result
