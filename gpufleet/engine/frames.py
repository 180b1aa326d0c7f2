"""The wire between a :class:`~gpufleet.engine.Pool` and its :class:`~gpufleet.engine.remote.RemotePool`
clients: length-prefixed msgspec msgpack frames on a Unix stream socket.

A frame is a 4-byte little-endian length and one message. Messages are tagged ``msgspec.Struct``s encoded
as arrays (a submit costs a few bytes beyond its item):

    client -> engine   Submit {id, item, timeout_s}   Cancel {id}   Call {id, method, args}
    engine -> client   Result {id, ok, value | error_type, error_message}   State {ready, draining}

Items and results are msgpack values; numpy arrays and scalars travel as msgpack *ext* values (dtype,
shape, raw bytes: bit-exact, never pickled); object arrays (KServe ``BYTES``) as ext of their elements;
torch tensors as numpy arrays. Errors cross as the class name and message of a ``GpufleetError``
and are raised as the same class on the other side (:func:`error_from`).

>>> codec = Codec()
>>> out = bytearray()
>>> codec.pack(Submit(1, {"x": [1, 2]}, None), out)
>>> codec.unpack(out)
[Submit(id=1, item={'x': [1, 2]}, timeout_s=None)]
"""

from __future__ import annotations

import struct
from typing import Any, Union

import msgspec
import numpy as np

from gpufleet import errors
from gpufleet.errors import GpufleetError, WorkerError

__all__ = ["Call", "Cancel", "Codec", "Message", "Result", "State", "Submit", "error_from", "error_result"]

MAX_FRAME = 1 << 30  # a larger length prefix means a corrupt stream, not a real message


class Submit(msgspec.Struct, tag="s", array_like=True):
    id: int
    item: Any
    timeout_s: Union[float, None] = None  # noqa: UP007 - msgspec reads the annotation at runtime on 3.9+
    pre: bool = False  # the front end already ran the model's preprocess on ``item``


class Cancel(msgspec.Struct, tag="c", array_like=True):
    id: int


class Call(msgspec.Struct, tag="q", array_like=True):
    """An RPC: ``method`` is ``info``, ``stats``, ``health`` or ``set_enabled`` (``args``: device label, bool);
    the answer is a :class:`Result` with the same id."""

    id: int
    method: str
    args: Union[list, None] = None  # noqa: UP007


class Result(msgspec.Struct, tag="r", array_like=True):
    id: int
    ok: bool
    value: Any = None
    error_type: str = ""
    error_message: str = ""


class State(msgspec.Struct, tag="t", array_like=True):
    """Pushed by the engine on connect and whenever readiness or draining changes."""

    ready: bool
    draining: bool


Message = Union[Submit, Cancel, Call, Result, State]  # noqa: UP007

_LEN = struct.Struct("<I")
_ARRAY, _OBJECTS, _SCALAR = 1, 2, 3
_HEAD = struct.Struct("<BB")  # len(dtype.str), ndim; then dtype.str, ndim uint64 dims, raw bytes


def _array_ext(arr: np.ndarray, code: int) -> msgspec.msgpack.Ext:
    if arr.dtype.hasobject:
        flat = arr.reshape(-1).tolist()
        return msgspec.msgpack.Ext(_OBJECTS, msgspec.msgpack.encode([list(arr.shape), flat], enc_hook=_enc_hook))
    if arr.dtype.names is not None:
        raise TypeError(f"structured numpy arrays cannot be sent ({arr.dtype})")
    dt = arr.dtype.str.encode()
    head = _HEAD.pack(len(dt), arr.ndim) + dt + struct.pack(f"<{arr.ndim}Q", *arr.shape)
    return msgspec.msgpack.Ext(code, head + arr.tobytes())


def _enc_hook(obj: Any) -> Any:
    """What msgpack lacks: numpy arrays/scalars (ext, bit-exact), torch tensors (as numpy), ``tolist``-ables."""
    if isinstance(obj, np.ndarray):
        return _array_ext(obj, _ARRAY)
    if isinstance(obj, np.generic):
        return _array_ext(np.asarray(obj), _SCALAR)
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):  # torch.Tensor, without importing torch
        t = obj.detach().cpu()
        try:
            return _array_ext(t.numpy(), _ARRAY)
        except TypeError:  # bfloat16 and friends have no numpy dtype
            return t.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot send a {type(obj).__name__} across processes")


def _ext_hook(code: int, data: memoryview) -> Any:
    # ``data`` points into the receive buffer, which is reused: every branch copies.
    if code == _OBJECTS:
        shape, flat = msgspec.msgpack.decode(data, ext_hook=_ext_hook)
        out = np.empty(len(flat), dtype=object)
        for i, v in enumerate(flat):
            out[i] = v
        return out.reshape(shape)
    if code not in (_ARRAY, _SCALAR):
        raise ValueError(f"unknown msgpack ext code {code}")
    n_dt, ndim = _HEAD.unpack_from(data)
    pos = _HEAD.size
    dtype = np.dtype(bytes(data[pos:pos + n_dt]).decode())
    pos += n_dt
    shape = struct.unpack_from(f"<{ndim}Q", data, pos)
    pos += 8 * ndim
    arr = np.frombuffer(data[pos:], dtype=dtype).copy() if len(data) > pos else np.empty(0, dtype=dtype)
    arr = arr.reshape(shape)
    return arr[()] if code == _SCALAR else arr


class Codec:
    """Packs messages into a send buffer and unpacks every complete frame from a receive buffer."""

    def __init__(self) -> None:
        self._enc = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
        self._dec = msgspec.msgpack.Decoder(Message, ext_hook=_ext_hook)

    def pack(self, msg: Message, out: bytearray) -> None:
        """Append one frame to ``out``; raises ``TypeError`` (``out`` unchanged) if a value cannot be sent."""
        start = len(out)
        out += b"\0\0\0\0"
        try:
            self._enc.encode_into(msg, out, start + 4)
        except BaseException:
            del out[start:]
            raise
        _LEN.pack_into(out, start, len(out) - start - 4)

    def encode(self, msg: Message) -> bytes:
        out = bytearray()
        self.pack(msg, out)
        return bytes(out)

    def unpack(self, buf: bytearray) -> list[Message]:
        """Decode and remove every complete frame at the start of ``buf``; a partial frame stays."""
        msgs: list[Message] = []
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


def error_result(rid: int, exc: BaseException) -> Result:
    return Result(rid, False, None, type(exc).__name__, str(exc))


def error_from(error_type: str, message: str) -> GpufleetError:
    """The ``GpufleetError`` subclass named ``error_type`` (``WorkerError`` for anything else)."""
    cls = getattr(errors, error_type, None)
    if isinstance(cls, type) and issubclass(cls, GpufleetError):
        return cls(message)
    return WorkerError(f"{error_type}: {message}" if message else error_type)
