"""Split one file at keyframes into segments decoded in parallel, and merge their results back in order.

H.264/HEVC closed GOPs decode independently from their keyframe, so a segment ``[start, stop)`` that starts
at a keyframe yields exactly the frames a full decode yields there; :class:`OrderedMerge` then puts the
segments' results back in frame order. A segment other than the one being emitted buffers at most
``limit`` results (``None``: unbounded, fine for small results; bounded when frames are kept for drawing).
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gpufleet.video.sources import VideoInfo

__all__ = ["OrderedMerge", "Segment", "split"]


@dataclass(frozen=True)
class Segment:
    """Frames ``[start, stop)`` of one input; ``stop=None`` means to the end."""

    index: int
    start: int
    stop: int | None

    def __len__(self) -> int:
        return 0 if self.stop is None else self.stop - self.start


def split(info: VideoInfo, n: int, *, min_frames: int = 1) -> list[Segment]:
    """At most ``n`` segments of about equal length, each starting at a keyframe.

    Live streams, files without a keyframe index and ``n <= 1`` give one segment. Segments shorter than
    ``min_frames`` are merged into their neighbour (decoder start-up is not free).
    """
    total = info.frames or 0
    keys = [k for k in info.keyframes if 0 < k < total]
    if n <= 1 or info.live or not total or not keys:
        return [Segment(0, 0, total or None)]
    cuts: list[int] = []
    for j in range(1, n):
        target = total * j / n
        pos = bisect.bisect_left(keys, target)
        near = [keys[p] for p in (pos - 1, pos) if 0 <= p < len(keys)]
        best = min(near, key=lambda k: abs(k - target))
        if (not cuts or best - cuts[-1] >= min_frames) and best >= min_frames and total - best >= min_frames:
            cuts.append(best)
    bounds = [0, *sorted(set(cuts)), total]
    return [Segment(i, a, b) for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)) if b > a]


class OrderedMerge:
    """Collect items from ``n`` producers (segment threads) and yield them producer 0 first, then 1, ...

    ``put`` blocks a producer that is ahead of the one being emitted once it holds ``limit`` items, so
    memory stays bounded; the producer being emitted never blocks. ``close(i, error)`` ends producer ``i``;
    its error is raised when iteration reaches it.
    """

    def __init__(self, n: int, limit: int | None = None, stop_event: threading.Event | None = None) -> None:
        self._bufs: list[deque[Any]] = [deque() for _ in range(n)]
        self._closed = [False] * n
        self._errors: list[BaseException | None] = [None] * n
        self._current = 0
        self._cond = threading.Condition()
        self.limit = limit
        self.stop_event = stop_event or threading.Event()

    def put(self, i: int, item: Any) -> bool:
        """Add producer ``i``'s next item; ``False`` when the merge was stopped (drop the item, stop)."""
        with self._cond:
            while (self.limit is not None and i != self._current and len(self._bufs[i]) >= self.limit
                   and not self.stop_event.is_set()):
                self._cond.wait(0.1)
            if self.stop_event.is_set():
                return False
            self._bufs[i].append(item)
            self._cond.notify_all()
            return True

    def close(self, i: int, error: BaseException | None = None) -> None:
        with self._cond:
            self._closed[i] = True
            self._errors[i] = error
            self._cond.notify_all()

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self._bufs)):
            while True:
                with self._cond:
                    self._current = i
                    self._cond.notify_all()
                    while not self._bufs[i] and not self._closed[i]:
                        if self.stop_event.is_set():
                            return
                        self._cond.wait(0.1)
                    if self._bufs[i]:
                        item = self._bufs[i].popleft()
                        self._cond.notify_all()
                    else:
                        if self._errors[i] is not None:
                            raise self._errors[i]
                        break
                yield item
