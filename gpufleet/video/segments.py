"""Split one file at keyframes into spans decoded in parallel, balance them while they run, and merge their
results back in order.

H.264/HEVC closed GOPs decode independently from their keyframe, so a span ``[start, stop)`` that starts at a
keyframe yields exactly the frames a full decode yields there. :class:`Spans` lets a decoder that has read
its span hand its place to one on the back half of the span with the most frames left (work stealing, cut at
a keyframe), so that no decoder sits idle while another still has a long way to go; :class:`OrderedMerge` puts
the spans' results back in frame order. A span other than the one being emitted buffers at most ``limit``
results (``None``: unbounded, fine for small results; bounded when frames are kept for drawing).
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from gpufleet.video.sources import VideoInfo

__all__ = ["OrderedMerge", "Segment", "Span", "Spans", "split"]


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


class Span:
    """Frames ``[start, stop)`` of one input being decoded by one thread. ``stop`` only ever comes down (another
    thread took the back half); the decoding thread asks :meth:`claim` before each read, and a thief cuts only
    after what was claimed. ``owner`` is the caller's (e.g. the input's stream); ``merge`` gets the thief's
    span as a new key."""

    def __init__(self, spans: Spans, owner: Any, start: int, stop: int, keyframes: Sequence[int],
                 merge: OrderedMerge | None = None) -> None:
        self._spans = spans
        self.owner, self.start, self.stop, self.keyframes, self.merge = owner, start, stop, keyframes, merge
        self.pos = start  # the first frame not claimed yet

    def claim(self, index: int, want: int) -> int:
        """Reserve frames ``[index, index + n)`` for this span's decoder and return ``n`` (0: the span ends
        before ``index``); ``n <= want``."""
        with self._spans.lock:
            n = max(0, min(want, self.stop - index))
            self.pos = max(self.pos, index + n)
            return n

    def finish(self) -> None:
        """The decoder is done with this span (ended, failed or stopped): nothing is taken from it any more."""
        with self._spans.lock:
            self._spans.open.discard(self)

    def __repr__(self) -> str:
        return f"Span({self.start}, {self.stop}, pos={self.pos})"


class Spans:
    """The open spans of a job's inputs. :meth:`steal` cuts the open span with the most frames left at the
    keyframe nearest the middle of what it has not claimed, when both halves keep at least ``min_frames``
    (starting a decoder is not free), and returns the back half as a new span of the same owner."""

    def __init__(self, min_frames: int = 30) -> None:
        self.lock = threading.Lock()
        self.open: set[Span] = set()
        self.min_frames = min_frames
        self.stolen = 0

    def add(self, owner: Any, start: int, stop: int, keyframes: Sequence[int],
            merge: OrderedMerge | None = None) -> Span:
        span = Span(self, owner, start, stop, keyframes, merge)
        with self.lock:
            self.open.add(span)
        return span

    def steal(self, can_take: Callable[[Span], bool] | None = None) -> Span | None:
        """A new span made of the back half of the open span with the most frames left, or ``None``.
        ``can_take(span)`` may refuse a victim (e.g. its input failed)."""
        if self.min_frames <= 0:
            return None
        m = self.min_frames
        with self.lock:
            best: tuple[int, Span, int] | None = None
            for span in self.open:
                left = span.stop - span.pos
                if left < 2 * m or (best is not None and left <= best[0]):
                    continue
                if can_take is not None and not can_take(span):
                    continue
                keys = span.keyframes
                lo, hi = bisect.bisect_left(keys, span.pos + m), bisect.bisect_right(keys, span.stop - m)
                if lo >= hi:
                    continue
                mid = (span.pos + span.stop) / 2
                p = bisect.bisect_left(keys, mid, lo, hi)
                cut = min((keys[q] for q in (p - 1, p) if lo <= q < hi), key=lambda k: abs(k - mid))
                best = (left, span, cut)
            if best is None:
                return None
            _, victim, cut = best
            new = Span(self, victim.owner, cut, victim.stop, victim.keyframes, victim.merge)
            if victim.merge is not None and not victim.merge.add(cut):
                return None
            victim.stop = cut
            self.open.add(new)
            self.stolen += 1
            return new


class OrderedMerge:
    """Collect items from producers (span threads), each known by a key (its first frame), and yield them
    producer by producer in key order.

    ``put`` blocks a producer that is ahead of the one being emitted once it holds ``limit`` items, so
    memory stays bounded; the producer being emitted never blocks. ``add(key)`` brings in a new producer while
    the merge runs: it must come after the one being emitted (a stolen back half does: its victim is still
    open). ``close(key, error)`` ends a producer; its error is raised when iteration reaches it.
    """

    def __init__(self, keys: Sequence[int], limit: int | None = None,
                 stop_event: threading.Event | None = None) -> None:
        self._order = sorted(keys)
        self._bufs: dict[int, deque[Any]] = {k: deque() for k in self._order}
        self._closed: dict[int, bool] = dict.fromkeys(self._order, False)
        self._errors: dict[int, BaseException | None] = dict.fromkeys(self._order)
        self._current = self._order[0] if self._order else 0
        self._cond = threading.Condition()
        self.limit = limit
        self.stop_event = stop_event or threading.Event()

    def add(self, key: int) -> bool:
        """A new producer ``key`` (after the one being emitted); ``False`` when the merge was stopped."""
        with self._cond:
            if self.stop_event.is_set() or key in self._bufs:
                return False
            bisect.insort(self._order, key)
            self._bufs[key], self._closed[key], self._errors[key] = deque(), False, None
            self._cond.notify_all()
            return True

    def put(self, key: int, item: Any) -> bool:
        """Add producer ``key``'s next item; ``False`` when the merge was stopped (drop the item, stop)."""
        with self._cond:
            buf = self._bufs[key]
            while (self.limit is not None and key != self._current and len(buf) >= self.limit
                   and not self.stop_event.is_set()):
                self._cond.wait(0.1)
            if self.stop_event.is_set():
                return False
            buf.append(item)
            self._cond.notify_all()
            return True

    def close(self, key: int, error: BaseException | None = None) -> None:
        with self._cond:
            self._closed[key] = True
            self._errors[key] = error
            self._cond.notify_all()

    def wait_closed(self) -> None:
        """Wait until every producer is closed (after a stop: until they all noticed it)."""
        with self._cond:
            while not all(self._closed.values()):
                self._cond.wait(0.1)

    def __iter__(self) -> Iterator[Any]:
        i = 0
        while True:
            with self._cond:
                if i >= len(self._order):
                    return
                key = self._order[i]
            while True:
                with self._cond:
                    self._current = key
                    self._cond.notify_all()
                    buf = self._bufs[key]
                    while not buf and not self._closed[key]:
                        if self.stop_event.is_set():
                            return
                        self._cond.wait(0.1)
                    if buf:
                        item = buf.popleft()
                        self._cond.notify_all()
                    else:
                        error = self._errors[key]
                        if error is not None:
                            raise error
                        break
                yield item
            i += 1
