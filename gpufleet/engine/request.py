"""One submitted item on its way through the engine."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

__all__ = ["Request"]


class Request:
    """An item, its future, and the times the engine needs for deadlines and stats."""

    __slots__ = ("item", "future", "t_submit", "t_enqueue", "deadline", "worker")

    def __init__(self, item: Any, future: Future, t_submit: float, deadline: float | None) -> None:
        self.item = item
        self.future = future
        self.t_submit = t_submit
        self.t_enqueue = t_submit
        self.deadline = deadline
        self.worker: Any = None
