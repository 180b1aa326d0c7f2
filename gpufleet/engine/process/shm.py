"""Shared memory between the pool and its process workers: the segments that carry a batch's arrays.

Each side owns a :class:`SegmentPool` of ``multiprocessing.shared_memory`` blocks named
``gpufleet_<pool>_<worker>…`` and reuses them message after message (a batch needs one segment, not one per
item); :class:`gpufleet.engine.wire.Codec` writes a batch's arrays into one and the receiver maps it
(:class:`Attachments`) to read them.

Only the parent unlinks names of a dead child: :func:`unlink_prefix` removes every segment of a pool
(or of one worker generation), so nothing is left in ``/dev/shm`` after a crash or ``close()``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory
from multiprocessing.shared_memory import SharedMemory
from typing import Any

_posixshmem = getattr(shared_memory, "_posixshmem", None)

__all__ = ["Attachments", "SegmentPool", "leaked_segments", "unlink_prefix"]

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
_MIN_SEGMENT = 1 << 20

def _open(name: str, create: bool, size: int = 0) -> SharedMemory:
    """A segment the resource tracker does not watch: its owner unlinks it, and a dying child must not."""
    if sys.version_info >= (3, 13):
        return SharedMemory(name, create=create, size=size, track=False)
    shm = SharedMemory(name, create=create, size=size)
    try:  # Python < 3.13 registers every create *and* attach; the tracker would unlink live segments
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - tracking is only a safety net
        pass
    return shm


def _close(shm: SharedMemory) -> None:
    try:
        shm.close()
    except BufferError:
        pass  # a caller still holds a view; the mapping goes when that view does


def _unlink(seg: SharedMemory) -> None:
    try:
        if sys.version_info >= (3, 13) or _posixshmem is None:
            seg.unlink()
        else:  # SharedMemory.unlink() would unregister from the tracker a second time (a KeyError there)
            _posixshmem.shm_unlink(seg._name)  # type: ignore[attr-defined]
    except FileNotFoundError:
        pass


def unlink_prefix(prefix: str) -> int:
    """Unlink every segment whose name starts with ``prefix`` (Linux: listed in /dev/shm); returns how many."""
    n = 0
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                n += 1
            except OSError:
                pass
    return n


def leaked_segments(prefix: str = "gpufleet_") -> list[str]:
    """Names in /dev/shm starting with ``prefix`` (for tests and diagnostics)."""
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except OSError:
        return []


class SegmentPool:
    """Segments one side creates and alone unlinks, reused: ``acquire`` a big-enough free one or create one."""

    def __init__(self, prefix: str, keep: int = 4) -> None:
        self.prefix = prefix
        self.keep = keep
        self._free: list[SharedMemory] = []
        self._used: dict[str, SharedMemory] = {}
        self._n = 0
        self.dropped: list[str] = []  # unlinked since the owner last reported them

    def acquire(self, nbytes: int) -> SharedMemory:
        fits = [s for s in self._free if s.size >= nbytes]
        if fits:
            seg = min(fits, key=lambda s: s.size)
            self._free.remove(seg)
        else:
            size = max(_MIN_SEGMENT, 1 << max(0, nbytes - 1).bit_length())
            seg = _open(f"{self.prefix}{self._n}", True, size)
            self._n += 1
        self._used[seg.name] = seg
        return seg

    def release(self, name: str) -> None:
        seg = self._used.pop(name, None)
        if seg is None:
            return
        self._free.append(seg)
        while len(self._free) > self.keep:
            small = min(self._free, key=lambda s: s.size)
            self._free.remove(small)
            self._drop(small)

    def release_all(self) -> None:
        for name in list(self._used):
            self.release(name)

    def _drop(self, seg: SharedMemory) -> None:
        self.dropped.append(seg.name)
        _close(seg)
        _unlink(seg)

    def close(self) -> None:
        for seg in [*self._free, *self._used.values()]:
            self._drop(seg)
        self._free.clear()
        self._used.clear()

    def __len__(self) -> int:
        return len(self._free) + len(self._used)


def encode_batch(codec: Any, segments: SegmentPool, lock: threading.Lock, items: list, *, bid: int,
                 preprocessed: bool) -> tuple[bytes, str | None, list[str]]:
    """``items`` as one encoded ``wire.Batch`` (``codec``: a ``wire.Codec``): one ``[n, ...]`` block when they
    share a shape and dtype, their bytes in a segment of ``segments`` when they need one. Returns the bytes, the
    segment's name (``None``: none) and the names of freed segments the batch tells the far side to drop. If
    encoding fails, the segment and those names go back to ``segments`` and the error is raised."""
    from gpufleet.engine import wire

    block, need = codec.stack(items)  # one block: one copy to the device on the far side, no per-item work
    prepared: list = []
    if block is None:
        prepared, need = codec.prepare(items)
    with lock:
        seg = segments.acquire(need) if need else None
        dropped, segments.dropped = segments.dropped, []
    try:
        data = codec.encode(wire.Batch(bid, prepared, stacked=block, dropped=dropped, preprocessed=preprocessed),
                            seg)
    except Exception:
        with lock:
            segments.dropped[:0] = dropped  # told with the next batch instead
            if seg is not None:
                segments.release(seg.name)
        raise
    return data, None if seg is None else seg.name, dropped


class Attachments:
    """The other side's segments, mapped once and kept until dropped. ``on_map(seg)`` runs once per segment
    after it is mapped, ``on_unmap(seg)`` before its mapping goes (a GPU child pins them for DMA)."""

    def __init__(self, on_map: Callable[[SharedMemory], None] | None = None,
                 on_unmap: Callable[[SharedMemory], None] | None = None) -> None:
        self._map: dict[str, SharedMemory] = {}
        self._on_map, self._on_unmap = on_map, on_unmap

    def get(self, name: str) -> SharedMemory:
        seg = self._map.get(name)
        if seg is None:
            seg = self._map[name] = _open(name, False)
            if self._on_map is not None:
                self._on_map(seg)
        return seg

    def drop(self, names: list[str]) -> None:
        for name in names:
            seg = self._map.pop(name, None)
            if seg is not None:
                if self._on_unmap is not None:
                    self._on_unmap(seg)
                _close(seg)

    def close(self) -> None:
        self.drop(list(self._map))
