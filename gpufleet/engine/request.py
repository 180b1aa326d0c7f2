"""One submitted item on its way through the engine."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["ItemFuture", "Request"]


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

    __slots__ = ("item", "future", "t_submit", "t_enqueue", "deadline", "worker", "preprocessed", "attempts",
                 "alone")

    def __init__(self, item: Any, future: Future, t_submit: float, deadline: float | None,
                 preprocessed: bool = False) -> None:
        self.item = item
        self.future = future
        self.t_submit = t_submit
        self.t_enqueue = t_submit
        self.deadline = deadline
        self.worker: Any = None
        self.preprocessed = preprocessed  # the model's preprocess already ran (an HTTP front end ran it)
        self.attempts = 0  # workers that died while serving it (process, ray)
        self.alone = False  # a suspect since such a death: it travels alone
