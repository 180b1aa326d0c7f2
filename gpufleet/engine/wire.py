"""The engine's one wire: msgspec structs for both hops, one codec, one way to carry an error.

Two hops use it:

    pool (parent) <-> process worker (child), one msgpack frame per ``multiprocessing`` pipe message
        parent -> child: Batch, Free, Shutdown
        child -> parent: Hello (device of the CUDA context, before setup), Ready | SetupFailed, Heartbeat,
                         Progress, BatchDone
    front end (RemotePool) <-> engine (PoolServer), length-prefixed frames on a Unix stream socket
        client -> engine: Submit, Cancel, Call          engine -> client: Reply, State

Items and results are msgpack values. What msgpack lacks travels as msgpack *ext* values, bit-exact and never
pickled: numpy arrays and scalars (inline up to :data:`INLINE_MAX` bytes; larger ones, on the pipe hop, in
the sender's shared-memory segment), torch CPU tensors (as arrays, dtype kept), tuples, object arrays (KServe
``BYTES``), large ``bytes`` (shared memory on the pipe hop). Only the pipe hop falls back to pickle, for
small odd values (a PIL image); the stream hop refuses them with ``TypeError``.

Errors cross both hops as :class:`ErrorInfo` (class name, message, traceback) and come back as the same
``GpufleetError`` class (:func:`error_from`).

>>> codec = Codec(FrontMessage)
>>> out = bytearray()
>>> codec.pack(Submit(1, {"x": [1, 2]}, None), out)
>>> codec.unpack(out)
[Submit(id=1, item={'x': [1, 2]}, timeout_s=None, pre=False)]
"""

from __future__ import annotations

import pickle
import struct
import sys
import traceback
import warnings
from typing import Any, Union

import msgspec
import numpy as np

from gpufleet import errors
from gpufleet.errors import GpufleetError, WorkerError

__all__ = [
    "Batch", "BatchDone", "Call", "Cancel", "ChildMessage", "Codec", "ErrorInfo", "Free", "FrontMessage",
    "Heartbeat", "Hello", "INLINE_MAX", "Progress", "Ready", "RemoteTraceback", "Reply", "SetupFailed", "Shutdown",
    "Start", "State", "Submit", "Warm", "as_tensor", "error_from", "error_info", "error_reply", "stackable",
]

INLINE_MAX = 4096  # arrays up to this many bytes travel inside the message on the pipe hop
BYTES_MIN = 64 * 1024  # bytes objects from this size go through shared memory (pipe hop)
MAX_FRAME = 1 << 30  # a larger length prefix means a corrupt stream, not a real message
_ALIGN = 64


# -- errors -------------------------------------------------------------------------------------------------
class ErrorInfo(msgspec.Struct, array_like=True, omit_defaults=True):
    """An exception flattened for the wire: ``type`` is its class name (a ``GpufleetError`` subclass comes
    back as itself, anything else as ``WorkerError``); ``sticky`` marks a CUDA error that poisons the process."""

    type: str
    message: str
    traceback: str = ""
    sticky: bool = False
    retry_after: float = 0.0  # the error's ``retry_after_s`` (0: none)


class RemoteTraceback(Exception):
    """The other process's traceback, chained as ``__cause__`` of the error an item gets."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def error_info(exc: BaseException, *, with_traceback: bool = False, sticky: bool = False) -> ErrorInfo:
    """``exc`` for the wire; ``with_traceback`` adds the formatted traceback of its cause (or of itself)."""
    tb = ""
    if with_traceback:
        src = exc.__cause__ if exc.__cause__ is not None else exc
        tb = "".join(traceback.format_exception(type(src), src, src.__traceback__))[-4000:]
    return ErrorInfo(type(exc).__name__, str(exc), tb, sticky, getattr(exc, "retry_after_s", None) or 0.0)


def error_from(info: ErrorInfo) -> GpufleetError:
    """The ``GpufleetError`` subclass named by ``info`` (``WorkerError`` for anything else), with the remote
    traceback chained as ``__cause__`` when there is one."""
    cls = getattr(errors, info.type, None)
    if isinstance(cls, type) and issubclass(cls, GpufleetError) and cls is not GpufleetError:
        err: GpufleetError = cls(info.message)
    else:
        err = WorkerError(f"{info.type}: {info.message}" if info.message else info.type)
    if info.traceback:
        err.__cause__ = RemoteTraceback(info.traceback)
    if info.retry_after:
        err.retry_after_s = info.retry_after
    return err


# -- pool <-> process worker --------------------------------------------------------------------------------
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
    t_main: float = 0.0  # time.monotonic() when the child began its start-up (a spare: when it was started)
    timings: dict[str, float] = {}  # the child's start-up phases, in seconds


class Start(msgspec.Struct, tag=True):
    """To a spare child (spawned ahead, imports done, waiting): set up (unless it did) and serve now."""


class Warm(msgspec.Struct, tag=True):
    """To a warm spare child: set the model up on the device now, then wait for ``Start``."""


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


class BatchDone(msgspec.Struct, tag=True, omit_defaults=True):
    """One batch done. ``outputs[i]`` is item i's result unless ``errors`` has an entry for i; ``error`` set
    means the whole batch failed (``outputs`` empty). ``segments``: result segments to ``Free`` after reading;
    ``dropped``: segments the child unlinked (the parent closes its mappings)."""

    id: int
    outputs: list[Any] = []
    errors: dict[int, ErrorInfo] = {}
    error: ErrorInfo | None = None
    timings: dict[str, float] = {}
    oom_batch: int = 0  # > 0: a batch of this size ran out of memory and was split
    media_s: float = 0.0  # seconds of media the batch produced (models with ``output_seconds``)
    isolated: int = 0  # splits made to isolate items the model failed on
    segments: list[str] = []
    dropped: list[str] = []
    idle_s: float = 0.0  # seconds the child waited for a batch with nothing on the device, since its last BatchDone


ChildMessage = Union[  # noqa: UP007
    Hello, Ready, SetupFailed, Heartbeat, Batch, Free, Shutdown, Progress, BatchDone, Start, Warm]


# -- front end <-> engine -----------------------------------------------------------------------------------
class Submit(msgspec.Struct, tag="s", array_like=True):
    id: int
    item: Any
    timeout_s: Union[float, None] = None  # noqa: UP007 - msgspec reads the annotation at runtime on 3.9+
    pre: bool = False  # the front end already ran the model's preprocess on ``item``


class Cancel(msgspec.Struct, tag="c", array_like=True):
    id: int


class Call(msgspec.Struct, tag="q", array_like=True):
    """An RPC: ``method`` is ``info``, ``stats``, ``health``, ``set_enabled`` (``args``: device label, bool) or
    ``configure`` (``args``: max batch size, max wait in ms; either None);
    the answer is a :class:`Reply` with the same id."""

    id: int
    method: str
    args: Union[list, None] = None  # noqa: UP007


class Reply(msgspec.Struct, tag="r", array_like=True):
    """The answer to a Submit or Call: ``value``, or ``error``."""

    id: int
    value: Any = None
    error: Union[ErrorInfo, None] = None  # noqa: UP007


class State(msgspec.Struct, tag="t", array_like=True):
    """Pushed by the engine on connect and whenever readiness or draining changes."""

    ready: bool
    draining: bool


FrontMessage = Union[Submit, Cancel, Call, Reply, State]  # noqa: UP007


def error_reply(rid: int, exc: BaseException) -> Reply:
    """An item's error for the front end; a model's failure (an error with a cause) carries its traceback, so
    the front end's log shows where the model raised. (Not cached per batch: holding the exception would keep
    its frames, and the batch they reference, alive.)"""
    return Reply(rid, None, error_info(exc, with_traceback=exc.__cause__ is not None))


# -- the codec ----------------------------------------------------------------------------------------------
EXT_SHM, EXT_INLINE, EXT_TUPLE, EXT_BYTES, EXT_PICKLE, EXT_OBJECTS, EXT_SCALAR = 1, 2, 3, 4, 5, 6, 7
_LEN = struct.Struct("<I")


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


def tensor_to_numpy(t: Any) -> tuple[np.ndarray, str]:
    """A torch tensor as a CPU numpy array and its torch dtype name (bfloat16 and friends as raw bits)."""
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


def stackable(items: list) -> tuple[list[np.ndarray], str] | None:
    """The rows of a batch that can travel as one block: all numpy arrays, or all CPU tensors, of one shape and
    numpy dtype, larger than what travels inline; with the torch dtype name ("" for arrays). ``None`` otherwise."""
    if len(items) < 2:
        return None
    first = items[0]
    kind = type(first)
    torch = sys.modules.get("torch")
    if kind is np.ndarray:
        name = ""
        if first.dtype.kind in "OV":
            return None
        arrs = items
    elif torch is not None and kind is torch.Tensor and first.device.type == "cpu" and not first.requires_grad:
        try:
            arrs = [t.numpy() for t in items if type(t) is kind]
        except (TypeError, RuntimeError):  # bfloat16 and the like, a GPU tensor or one that needs grad
            return None
        name = str(first.dtype).replace("torch.", "")
    else:
        return None
    a0 = arrs[0]
    if len(arrs) != len(items) or a0.nbytes <= INLINE_MAX:
        return None
    shape, dtype = a0.shape, a0.dtype
    for a in arrs:
        if type(a) is not np.ndarray or a.shape != shape or a.dtype != dtype:
            return None
    return arrs, name


def as_tensor(arr: np.ndarray, name: str) -> Any:
    """``arr`` as the torch tensor of dtype ``name`` it was sent as (sharing its memory)."""
    import torch

    with warnings.catch_warnings():  # a read-only buffer (shared memory, Ray's object store) is only read
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(arr)
    dtype = getattr(torch, name)
    return t if t.dtype == dtype else t.view(dtype)


class Codec:
    """Encodes one direction's messages and decodes the other's (``decode_type``: ``ChildMessage`` or
    ``FrontMessage``).

    With ``segments`` (the sender's :class:`~gpufleet.engine.process.shm.SegmentPool`) and ``attachments``
    (the receiver's mappings) it is the pipe hop's codec: :meth:`prepare` / :meth:`stack` a batch, then
    :meth:`encode` writes its arrays into one segment. ``copy=True`` (the parent) copies received arrays out of
    the segment; ``copy=False`` (the child) reads them in place, valid until the batch's answer is sent.
    Without segments it is the stream hop's codec: :meth:`pack` / :meth:`unpack` length-prefixed frames,
    arrays inline. ``bytes_min``: ``bytes`` values from this size go into the segment (the Ray hop sends every
    JPEG there, so the call itself stays small).
    """

    def __init__(self, decode_type: Any, *, segments: Any = None, attachments: Any = None, copy: bool = True,
                 bytes_min: int = BYTES_MIN) -> None:
        self.segments = segments
        self.attachments = attachments
        self.copy = copy
        self.bytes_min = bytes_min
        self._enc = msgspec.msgpack.Encoder(enc_hook=self._hook)
        self._ref_enc = msgspec.msgpack.Encoder()
        self._ref_dec = msgspec.msgpack.Decoder(ArrayRef)
        self._inline_dec = msgspec.msgpack.Decoder(InlineArray)
        self._dec = msgspec.msgpack.Decoder(decode_type, ext_hook=self._ext)
        self._any = msgspec.msgpack.Decoder(ext_hook=self._ext)
        self._seg: Any = None
        self._cursor = 0

    # -- pipe hop: batches through shared memory ----------------------------------------------------------
    def prepare(self, value: Any) -> tuple[Any, int]:
        """``value`` with arrays/tuples/large bytes wrapped, and the shared-memory bytes it needs."""
        torch = sys.modules.get("torch")
        need = 0
        bytes_min = self.bytes_min

        def walk(v: Any) -> Any:
            nonlocal need
            if isinstance(v, np.ndarray):
                if v.dtype.kind in "OV":
                    return v  # object / structured arrays: ext of their elements, or pickled
                w = _Arr(v, "")
            elif torch is not None and isinstance(v, torch.Tensor):
                arr, name = tensor_to_numpy(v)
                w = _Arr(arr, name)
            elif isinstance(v, (list, tuple)):
                out = [walk(x) for x in v]
                return _Tup(out) if isinstance(v, tuple) and type(v) is tuple else out
            elif isinstance(v, dict):
                return {k: walk(x) for k, x in v.items()}
            elif isinstance(v, bytes) and len(v) >= bytes_min:
                need += len(v) + _ALIGN
                return _Big(v)
            else:
                return v
            if w.arr.nbytes > INLINE_MAX:
                need += w.arr.nbytes + _ALIGN
            return w

        return walk(value), need

    def stack(self, items: list) -> tuple[Any, int]:
        """``items`` as one block when :func:`stackable`: the receiver reads them as one ``[n, *shape]`` array or
        tensor, and copies it to a device in one go. ``(None, 0)`` otherwise (send the items one by one)."""
        rows = stackable(items)
        if rows is None:
            return None, 0
        block = _Stack(*rows)
        return block, block.nbytes + _ALIGN

    def encode(self, msg: Any, seg: Any = None) -> bytes:
        """Encode a message, writing its prepared arrays into ``seg`` (acquired from ``segments`` for the size
        :meth:`prepare` returned; the caller releases it once the receiver is done with it)."""
        self._seg, self._cursor = seg, 0
        try:
            return self._enc.encode(msg)
        finally:
            self._seg = None

    def decode(self, data: bytes) -> Any:
        return self._dec.decode(data)

    # -- stream hop: length-prefixed frames ---------------------------------------------------------------
    def pack(self, msg: Any, out: bytearray) -> None:
        """Append one frame to ``out``; raises ``TypeError`` (``out`` unchanged) if a value cannot be sent."""
        start = len(out)
        out += b"\0\0\0\0"
        try:
            self._enc.encode_into(msg, out, start + 4)
        except BaseException:
            del out[start:]
            raise
        _LEN.pack_into(out, start, len(out) - start - 4)

    def unpack(self, buf: bytearray) -> list[Any]:
        """Decode and remove every complete frame at the start of ``buf``; a partial frame stays."""
        msgs: list[Any] = []
        pos, end = 0, len(buf)
        mv = memoryview(buf)
        try:
            while end - pos >= 4:
                (size,) = _LEN.unpack_from(mv, pos)
                if size > MAX_FRAME:
                    raise ValueError(f"frame of {size} bytes: the stream is corrupt")
                stop = pos + 4 + size
                if stop > end:
                    break
                msgs.append(self._dec.decode(mv[pos + 4:stop]))
                pos = stop
        finally:
            mv.release()
        if pos:
            del buf[:pos]
        return msgs

    # -- encoding hook ------------------------------------------------------------------------------------
    def _place(self, nbytes: int) -> int:
        off = self._cursor
        self._cursor = off + (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
        return off

    def _in_segment(self, rows: list[np.ndarray], shape: tuple[int, ...], torch: str) -> msgspec.msgpack.Ext:
        """Copy ``rows`` (arrays of one shape and dtype) one after another into the segment; the reference
        reads them back as one array of ``shape``."""
        a0 = rows[0]
        nbytes = a0.nbytes * len(rows)
        off = self._place(nbytes)
        dst = np.ndarray((len(rows), *a0.shape), a0.dtype, buffer=self._seg.buf, offset=off)
        for i, a in enumerate(rows):
            np.copyto(dst[i], a, casting="no")
        del dst
        ref = ArrayRef(self._seg.name, off, nbytes, a0.dtype.str, shape, torch)
        return msgspec.msgpack.Ext(EXT_SHM, self._ref_enc.encode(ref))

    def _inline(self, arr: np.ndarray, torch: str) -> msgspec.msgpack.Ext:
        if arr.dtype.hasobject:
            flat = arr.reshape(-1).tolist()
            return msgspec.msgpack.Ext(EXT_OBJECTS, self._enc.encode([list(arr.shape), flat]))
        if arr.dtype.names is not None:
            if self.segments is not None:
                return msgspec.msgpack.Ext(EXT_PICKLE, pickle.dumps(arr, protocol=pickle.HIGHEST_PROTOCOL))
            raise TypeError(f"structured numpy arrays cannot be sent ({arr.dtype})")
        data = np.ascontiguousarray(arr).tobytes()
        return msgspec.msgpack.Ext(EXT_INLINE, self._ref_enc.encode(InlineArray(arr.dtype.str, arr.shape, torch, data)))

    def _hook(self, obj: Any) -> Any:
        if isinstance(obj, _Arr):  # prepared (pipe hop)
            arr = obj.arr
            if arr.nbytes <= INLINE_MAX or self._seg is None:
                return self._inline(arr, obj.torch)
            return self._in_segment([arr], arr.shape, obj.torch)  # > INLINE_MAX bytes: at least 1-d
        if isinstance(obj, _Stack):
            return self._in_segment(obj.arrs, (len(obj.arrs), *obj.arrs[0].shape), obj.torch)
        if isinstance(obj, _Tup):
            return msgspec.msgpack.Ext(EXT_TUPLE, self._enc.encode(obj.items))
        if isinstance(obj, _Big):
            n = len(obj.data)
            off = self._place(n)
            self._seg.buf[off:off + n] = obj.data
            return msgspec.msgpack.Ext(EXT_BYTES, self._ref_enc.encode(ArrayRef(self._seg.name, off, n)))
        if isinstance(obj, np.ndarray):
            return self._inline(obj, "")
        if isinstance(obj, np.generic):
            return msgspec.msgpack.Ext(EXT_SCALAR, self._inline(np.asarray(obj), "").data)
        if hasattr(obj, "detach") and hasattr(obj, "numpy"):  # torch.Tensor, without importing torch
            if self.segments is None:  # stream hop: as numpy (bfloat16 and friends as lists), no torch needed there
                t = obj.detach().cpu()
                try:
                    return self._inline(t.numpy(), "")
                except TypeError:
                    return t.tolist()
            arr, name = tensor_to_numpy(obj)
            return self._inline(arr, name)
        if self.segments is not None:  # pipe hop: small odd values (a PIL image) are pickled
            return msgspec.msgpack.Ext(EXT_PICKLE, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        if hasattr(obj, "tolist"):
            return obj.tolist()
        raise TypeError(f"cannot send a {type(obj).__name__} across processes")

    # -- decoding hook ------------------------------------------------------------------------------------
    def _ext(self, code: int, data: memoryview) -> Any:
        # ``data`` may point into a receive buffer that is reused: every branch copies, except arrays read in
        # place from a segment when ``copy`` is off.
        if code == EXT_SHM:
            ref = self._ref_dec.decode(data)
            seg = self.attachments.get(ref.seg)
            arr = np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=seg.buf, offset=ref.offset)
            if self.copy:
                arr = arr.copy()
            return as_tensor(arr, ref.torch) if ref.torch else arr
        if code == EXT_INLINE:
            a = self._inline_dec.decode(data)
            arr = np.frombuffer(a.data, dtype=np.dtype(a.dtype)).reshape(a.shape).copy()
            return as_tensor(arr, a.torch) if a.torch else arr
        if code == EXT_SCALAR:
            return self._ext(EXT_INLINE, data)[()]
        if code == EXT_OBJECTS:
            shape, flat = self._any.decode(data)
            out = np.empty(len(flat), dtype=object)
            for i, v in enumerate(flat):
                out[i] = v
            return out.reshape(shape)
        if code == EXT_TUPLE:
            return tuple(self._any.decode(data))
        if code == EXT_BYTES:
            ref = self._ref_dec.decode(data)
            return bytes(self.attachments.get(ref.seg).buf[ref.offset:ref.offset + ref.nbytes])
        if code == EXT_PICKLE and self.segments is not None:
            return pickle.loads(data)
        raise ValueError(f"unknown wire extension {code}")


