"""One submitted item on its way through the engine."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from typing import Any

__all__ = ["ItemFuture", "Request", "fail_items", "preprocess_error", "resolve_items"]

# A preprocess cheaper than this (mean per item) runs in the submitting thread (Pool) or on the event loop (an
# HTTP front end's RemotePool): handing an item to a thread costs ~20-50 us of GIL-holding work per item, which
# capped 1 and 2 GPUs alike at ~13k items/s on 2x H200 for the classifier's preprocess of ready uint8 tensors.
INLINE_PRE_S = 30e-6
PRE_EWMA = 0.1  # weight of the newest sample in the preprocess time estimate
PRE_MIN_SAMPLES = 16  # measured on threads before it may run inline


class ItemFuture(Future):
    """A pool item's future: cancelling it (``future.cancel()``, or an awaiting asyncio task being cancelled)
    frees its queue slot at once instead of when a worker reaches it."""

    _on_cancel: Callable[[], None] | None = None

    def cancel(self) -> bool:
        cancelled = super().cancel()
        hook, self._on_cancel = self._on_cancel, None
        if cancelled and hook is not None:
            hook()
        return cancelled


class Request:
    """An item, its future, and the times the engine needs for deadlines and stats."""

    __slots__ = ("item", "future", "t_submit", "t_enqueue", "deadline", "worker", "preprocessed")

    def __init__(self, item: Any, future: Future, t_submit: float, deadline: float | None,
                 preprocessed: bool = False) -> None:
        self.item = item
        self.future = future
        self.t_submit = t_submit
        self.t_enqueue = t_submit
        self.deadline = deadline
        self.worker: Any = None
        self.preprocessed = preprocessed  # the model's preprocess already ran (an HTTP front end ran it)


def resolve_items(worker: Any, pairs: Iterable[tuple[Request, Any]], now: float) -> None:
    """Deliver results of ``worker``'s items: count them, record end-to-end latency, free their queue slots
    (``worker._on_done``), then wake the callers. Items already finished (e.g. timed out) are skipped."""
    live = [(r, v) for r, v in pairs if not r.future.done()]
    if not live:
        return
    stats = worker.stats
    with stats.lock:
        stats.total_requests += len(live)
        e2e = stats.stage("e2e")
        for r, _ in live:
            e2e.add(now - r.t_submit)
    worker._on_done(worker, len(live))
    for r, v in live:
        r.future.set_result(v)


def fail_items(worker: Any, reqs: Iterable[Request], err: BaseException, cause: BaseException | None) -> None:
    """Fail ``worker``'s items with ``err`` (a copy per item, ``cause`` chained). Pending items are marked
    running first, atomically against ``cancel()``: a cancelled item already freed its slot."""
    live = [r for r in reqs if not r.future.done() and (r.future.running() or r.future.set_running_or_notify_cancel())]
    if not live:
        return
    with worker.stats.lock:
        worker.stats.errors += len(live)
    worker._on_done(worker, len(live))
    for r in live:
        e = err if len(live) == 1 else type(err)(str(err))
        e.__cause__ = cause
        try:
            r.future.set_exception(e)
        except InvalidStateError:
            pass  # cancelled in the meantime; nobody waits for this item


def preprocess_error(exc: BaseException) -> BaseException:
    """What a failed ``preprocess`` answers its item with: the model's own ``GpufleetError`` as it is, anything
    else as ``InputError`` (a preprocess fails on a bad item), the original chained."""
    from gpufleet.errors import GpufleetError, InputError

    if isinstance(exc, GpufleetError):
        return exc
    err = InputError(f"preprocess failed: {exc}")
    err.__cause__ = exc
    return err
