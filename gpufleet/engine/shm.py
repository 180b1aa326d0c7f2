"""Shared-memory transport for arrays and tensors between the pool and its process workers.

Each side owns a :class:`SegmentPool` of ``multiprocessing.shared_memory`` blocks named
``gpufleet_<pool>_<worker>…`` and reuses them message after message (a batch needs one segment, not one per
item). :class:`Codec` turns a value into a msgpack frame: numpy arrays, torch CPU tensors and large
``bytes`` are copied once into the sender's segment and replaced by a reference (a msgpack extension), small
arrays travel inline, tuples stay tuples. The receiver maps the segment (:class:`Attachments`) and reads the
array in place (the child, for the duration of a batch) or copies it out (the parent, so the child can reuse
the segment at once). Anything msgpack cannot carry (a PIL image, a custom object) falls back to pickle:
fine for small values, never used for arrays.

Only the parent unlinks names of a dead child: :func:`unlink_prefix` removes every segment of a pool
(or of one worker generation), so nothing is left in ``/dev/shm`` after a crash or ``close()``.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import msgspec
import numpy as np

_posixshmem = getattr(shared_memory, "_posixshmem", None)

__all__ = ["Attachments", "Codec", "SegmentPool", "leaked_segments", "unlink_prefix"]

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
INLINE_MAX = 4096  # arrays up to this many bytes travel inside the message
BYTES_MIN = 64 * 1024  # bytes objects from this size go through shared memory
_ALIGN = 64
_MIN_SEGMENT = 1 << 20

EXT_SHM, EXT_INLINE, EXT_TUPLE, EXT_BYTES, EXT_PICKLE = 1, 2, 3, 4, 5


class ArrayRef(msgspec.Struct, array_like=True):
    seg: str
    offset: int
    nbytes: int
    dtype: str = ""
    shape: tuple[int, ...] = ()
    torch: str = ""  # torch dtype name when the value was a tensor, else ""


class InlineArray(msgspec.Struct, array_like=True):
    dtype: str
    shape: tuple[int, ...]
    torch: str
    data: bytes


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


class _Arr:
    __slots__ = ("arr", "torch")

    def __init__(self, arr: np.ndarray, torch: str) -> None:
        self.arr, self.torch = arr, torch


class _Tup:
    __slots__ = ("items",)

    def __init__(self, items: list) -> None:
        self.items = items


class _Stack:
    """Arrays of one shape and dtype that travel as one block, ``[n, *shape]`` (see :meth:`Codec.stack`)."""

    __slots__ = ("arrs", "torch", "nbytes")

    def __init__(self, arrs: list[np.ndarray], torch: str) -> None:
        self.arrs, self.torch = arrs, torch
        self.nbytes = arrs[0].nbytes * len(arrs)


class _Big:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _tensor_to_numpy(t: Any) -> tuple[np.ndarray, str]:
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    name = str(t.dtype).replace("torch.", "")
    try:
        return t.numpy(), name
    except TypeError:  # bfloat16, float8: no numpy dtype; ship the raw bits and view them back
        raw = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        return t.contiguous().view(raw).numpy(), name


class Codec:
    """Encodes messages for one direction (``pool`` is the sender's segments) and decodes the other's.

    ``copy=True`` (the parent) copies received arrays out of the segment; ``copy=False`` (the child) reads
    them in place, valid until the batch's result has been sent.
    """

    def __init__(self, pool: SegmentPool, attachments: Attachments, decode_type: Any, *, copy: bool) -> None:
        self.pool = pool
        self.attachments = attachments
        self.copy = copy
        self._enc = msgspec.msgpack.Encoder(enc_hook=self._hook)
        self._ref_enc = msgspec.msgpack.Encoder()
        self._ref_dec = msgspec.msgpack.Decoder(ArrayRef)
        self._inline_dec = msgspec.msgpack.Decoder(InlineArray)
        self._dec = msgspec.msgpack.Decoder(decode_type, ext_hook=self._ext)
        self._any = msgspec.msgpack.Decoder(ext_hook=self._ext)
        self._seg: SharedMemory | None = None
        self._cursor = 0

    # -- encoding -----------------------------------------------------------------------------------------
    def prepare(self, value: Any) -> tuple[Any, int]:
        """``value`` with arrays/tuples/large bytes wrapped, and the shared-memory bytes it needs."""
        torch = sys.modules.get("torch")
        need = 0

        def walk(v: Any) -> Any:
            nonlocal need
            if isinstance(v, np.ndarray):
                if v.dtype.kind in "OV":
                    return v  # object / structured arrays: pickled
                w = _Arr(v, "")
            elif torch is not None and isinstance(v, torch.Tensor):
                arr, name = _tensor_to_numpy(v)
                w = _Arr(arr, name)
            elif isinstance(v, (list, tuple)):
                out = [walk(x) for x in v]
                return _Tup(out) if isinstance(v, tuple) and type(v) is tuple else out
            elif isinstance(v, dict):
                return {k: walk(x) for k, x in v.items()}
            elif isinstance(v, bytes) and len(v) >= BYTES_MIN:
                need += len(v) + _ALIGN
                return _Big(v)
            else:
                return v
            if w.arr.nbytes > INLINE_MAX:
                need += w.arr.nbytes + _ALIGN
            return w

        return walk(value), need

    def stack(self, items: list) -> tuple[Any, int]:
        """``items`` as one block when they are all arrays (or all CPU tensors) of one shape and numpy dtype
        and larger than what travels inline: the receiver reads them as one ``[n, *shape]`` array or tensor,
        and copies it to a device in one go. ``(None, 0)`` otherwise (send the items one by one)."""
        if len(items) < 2:
            return None, 0
        first = items[0]
        kind = type(first)
        torch = sys.modules.get("torch")
        if kind is np.ndarray:
            name = ""
            if first.dtype.kind in "OV":
                return None, 0
            arrs = items
        elif torch is not None and kind is torch.Tensor and first.device.type == "cpu" and not first.requires_grad:
            try:
                arrs = [t.numpy() for t in items if type(t) is kind]
            except (TypeError, RuntimeError):  # bfloat16 and the like, a GPU tensor or one that needs grad
                return None, 0
            name = str(first.dtype).replace("torch.", "")
        else:
            return None, 0
        a0 = arrs[0]
        if len(arrs) != len(items) or a0.nbytes <= INLINE_MAX:
            return None, 0
        shape, dtype = a0.shape, a0.dtype
        for a in arrs:
            if type(a) is not np.ndarray or a.shape != shape or a.dtype != dtype:
                return None, 0
        block = _Stack(arrs, name)
        return block, block.nbytes + _ALIGN

    def encode(self, msg: Any, seg: SharedMemory | None) -> bytes:
        """Encode a prepared message, writing its arrays into ``seg`` (acquired from ``pool`` for the size
        :meth:`prepare` returned; the caller releases it once the receiver is done with it)."""
        self._seg, self._cursor = seg, 0
        try:
            return self._enc.encode(msg)
        finally:
            self._seg = None

    def _place(self, nbytes: int) -> int:
        off = self._cursor
        self._cursor = off + (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
        return off

    def _in_segment(self, rows: list[np.ndarray], shape: tuple[int, ...], torch: str) -> msgspec.msgpack.Ext:
        """Copy ``rows`` (arrays of one shape and dtype) one after another into the segment; the reference
        reads them back as one array of ``shape``."""
        assert self._seg is not None
        a0 = rows[0]
        nbytes = a0.nbytes * len(rows)
        off = self._place(nbytes)
        dst = np.ndarray((len(rows), *a0.shape), a0.dtype, buffer=self._seg.buf, offset=off)
        for i, a in enumerate(rows):
            np.copyto(dst[i], a, casting="no")
        del dst
        ref = ArrayRef(self._seg.name, off, nbytes, a0.dtype.str, shape, torch)
        return msgspec.msgpack.Ext(EXT_SHM, self._ref_enc.encode(ref))

    def _hook(self, obj: Any) -> Any:
        if isinstance(obj, _Arr):
            arr = obj.arr
            if arr.nbytes <= INLINE_MAX:
                data = np.ascontiguousarray(arr).tobytes()
                return msgspec.msgpack.Ext(EXT_INLINE, self._ref_enc.encode(
                    InlineArray(arr.dtype.str, arr.shape, obj.torch, data)))
            return self._in_segment([arr], arr.shape, obj.torch)  # > INLINE_MAX bytes: at least 1-d
        if isinstance(obj, _Stack):
            return self._in_segment(obj.arrs, (len(obj.arrs), *obj.arrs[0].shape), obj.torch)
        if isinstance(obj, _Tup):
            return msgspec.msgpack.Ext(EXT_TUPLE, self._enc.encode(obj.items))
        if isinstance(obj, _Big):
            assert self._seg is not None
            n = len(obj.data)
            off = self._place(n)
            self._seg.buf[off:off + n] = obj.data
            return msgspec.msgpack.Ext(EXT_BYTES, self._ref_enc.encode(ArrayRef(self._seg.name, off, n)))
        if isinstance(obj, np.generic):
            return obj.item()
        return msgspec.msgpack.Ext(EXT_PICKLE, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    # -- decoding -----------------------------------------------------------------------------------------
    def decode(self, data: bytes) -> Any:
        return self._dec.decode(data)

    def _ext(self, code: int, data: memoryview) -> Any:
        if code == EXT_SHM:
            ref = self._ref_dec.decode(data)
            seg = self.attachments.get(ref.seg)
            arr = np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=seg.buf, offset=ref.offset)
            if self.copy:
                arr = arr.copy()
            return _as_tensor(arr, ref.torch) if ref.torch else arr
        if code == EXT_INLINE:
            a = self._inline_dec.decode(data)
            arr = np.frombuffer(a.data, dtype=np.dtype(a.dtype)).reshape(a.shape).copy()
            return _as_tensor(arr, a.torch) if a.torch else arr
        if code == EXT_TUPLE:
            return tuple(self._any.decode(data))
        if code == EXT_BYTES:
            ref = self._ref_dec.decode(data)
            return bytes(self.attachments.get(ref.seg).buf[ref.offset:ref.offset + ref.nbytes])
        if code == EXT_PICKLE:
            return pickle.loads(data)
        raise ValueError(f"unknown wire extension {code}")


def _as_tensor(arr: np.ndarray, name: str) -> Any:
    import torch

    t = torch.from_numpy(arr)
    dtype = getattr(torch, name)
    return t if t.dtype == dtype else t.view(dtype)

