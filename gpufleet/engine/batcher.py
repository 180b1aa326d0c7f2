"""Dynamic batching: a worker's queue that hands out up to ``max_n`` items, or what came within ``max_wait``."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from gpufleet.engine.request import Request
from gpufleet.models.buckets import bucket_for  # re-exported: its home is the models layer (CUDA graphs use it)

__all__ = ["Batcher", "bucket_for"]


class Batcher:
    """A worker's queue. ``take`` returns as soon as ``max_n`` items are there, or ``max_wait_s`` after the
    oldest queued item arrived, whichever is first: an idle queue flushes a lone item after ``max_wait_s``,
    a backlog is served at once in full batches.
    """

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self.cap: int | None = None  # the most items a take returns, whatever it asked (set live: Pool.configure)
        self._q: deque[Request] = deque()
        # One lock for the queue; the consumer waits on the condition. ``_want`` is how many queued items
        # wake the consumer, so producers do not wake it once per item while a batch fills.
        self._cv = threading.Condition(threading.Lock())
        self._want = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._q)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, req: Request) -> None:
        req.t_enqueue = time.monotonic()
        with self._cv:
            self._q.append(req)
            if self._want and len(self._q) >= self._want:
                self._cv.notify()

    def put_many(self, reqs: Sequence[Request]) -> None:
        now = time.monotonic()
        for r in reqs:
            r.t_enqueue = now
        with self._cv:
            self._q.extend(reqs)
            if self._want and len(self._q) >= self._want:
                self._cv.notify()

    def take(self, max_n: int, *, block: bool = True, idle_timeout: float | None = None) -> list[Request] | None:
        """Up to ``max_n`` requests. ``block=False`` returns what is queued now (maybe ``[]``) without waiting.

        Returns ``None`` once the batcher is closed and empty, and ``[]`` when ``idle_timeout`` passes with
        nothing queued.
        """
        q = self._q
        with self._cv:
            if not block:
                return [q.popleft() for _ in range(min(max_n, len(q)))]
            while not q:
                if self._closed:
                    return None
                self._want = 1
                woke = self._cv.wait(idle_timeout)
                self._want = 0
                if not woke and not q:
                    return []
            if len(q) < max_n and self.max_wait_s > 0 and not self._closed:
                deadline = q[0].t_enqueue + self.max_wait_s
                self._want = max_n
                while len(q) < max_n and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cv.wait(remaining)
                self._want = 0
            if self.cap is not None:  # lowered while this take waited with the old size
                max_n = min(max_n, self.cap)
            return [q.popleft() for _ in range(min(max_n, len(q)))]

    def wait_full(self, max_n: int, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``max_n`` items are queued, the batcher closes or ``ready()`` holds (checked now and
        whenever :meth:`wake` is called), at most ``timeout`` seconds; ``False`` if the time ran out."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._want = max_n
            try:
                while len(self._q) < max_n and not self._closed and not ready():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cv.wait(remaining)
            finally:
                self._want = 0
        return True

    def wake(self) -> None:
        """Wake a consumer in :meth:`wait_full` to check its ``ready`` again."""
        with self._cv:
            self._cv.notify_all()

    def expire(self, now: float) -> list[Request]:
        """Remove and return the queued items whose deadline passed (they wait for a worker that is down)."""
        with self._cv:
            if not any(r.deadline is not None and r.deadline < now for r in self._q):
                return []
            late = [r for r in self._q if r.deadline is not None and r.deadline < now]
            keep = [r for r in self._q if r.deadline is None or r.deadline >= now]
            self._q.clear()
            self._q.extend(keep)
            return late

    def drain(self) -> list[Request]:
        """Remove and return everything queued."""
        with self._cv:
            items = list(self._q)
            self._q.clear()
            return items

    def close(self) -> None:
        """No more items will come: wake the consumer so it can finish what is queued and stop."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
