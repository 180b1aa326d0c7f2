"""The engine's wire (gpufleet.engine.wire) on the front-end hop: frames, numpy bit-exactness, error classes.
The pipe hop through shared memory is in test_process_wire.py."""

from __future__ import annotations

import numpy as np
import pytest

from gpufleet import errors
from gpufleet.engine.wire import (
    Call,
    Cancel,
    Codec,
    ErrorInfo,
    FrontMessage,
    Reply,
    State,
    Submit,
    error_from,
    error_reply,
)


def _round_trip(value):
    codec = Codec(FrontMessage)
    out = bytearray()
    codec.pack(Submit(7, value, 1.5), out)
    (msg,) = codec.unpack(out)
    assert isinstance(msg, Submit) and msg.id == 7 and msg.timeout_s == 1.5 and not out
    return msg.item


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f2", "<f8", "<i8", "<u1", "?", "<c8", "<U3", "S4"])
def test_numpy_arrays_round_trip_bit_exact(dtype: str) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    got = _round_trip(arr)
    assert got.dtype == arr.dtype and got.shape == arr.shape
    assert got.tobytes() == arr.tobytes()
    got[0] = got[1]  # writeable: a copy out of the receive buffer


def test_special_arrays_and_scalars() -> None:
    nan_payload = np.array([0x7FC00001, 0xFF800000, 0], dtype="<u4").view("<f4")  # NaN payload, -inf, 0
    strided = np.arange(24, dtype=np.int16).reshape(4, 6)[:, ::2]
    for arr in (nan_payload, strided, np.zeros((0, 3), np.uint8), np.array(5, np.int32)):
        got = _round_trip(arr)
        assert isinstance(got, np.ndarray) and got.dtype == arr.dtype and got.shape == arr.shape
        assert got.tobytes() == np.ascontiguousarray(arr).tobytes()
    for scalar in (np.float32(1.25), np.int64(-3), np.bool_(True), np.float64(0.1)):
        got = _round_trip(scalar)
        assert type(got) is type(scalar) and got == scalar
    objects = np.array([b"ab", b"", b"\x00\xff"], dtype=object).reshape(3, 1)
    got = _round_trip(objects)
    assert got.dtype == object and got.shape == (3, 1) and got.tolist() == objects.tolist()


def test_nested_values_bytes_and_torch() -> None:
    torch = pytest.importorskip("torch")
    item = {"image": b"\xff\xd8jpeg", "rows": [np.arange(3, dtype=np.uint8), "x", None, 1.5, [True]],
            "t": torch.arange(4, dtype=torch.float16)}
    got = _round_trip(item)
    assert got["image"] == b"\xff\xd8jpeg" and got["rows"][1:] == ["x", None, 1.5, [True]]
    assert got["rows"][0].tolist() == [0, 1, 2] and got["t"].dtype == np.float16
    assert _round_trip(torch.ones(2, dtype=torch.bfloat16)) == [1.0, 1.0]  # no numpy dtype: a list


def test_unsendable_value_raises_and_leaves_buffer_unchanged() -> None:
    codec = Codec(FrontMessage)
    out = bytearray()
    codec.pack(Cancel(1), out)
    before = bytes(out)
    with pytest.raises(TypeError, match="cannot send"):
        codec.pack(Reply(2, object()), out)
    assert bytes(out) == before
    assert codec.unpack(out) == [Cancel(1)]


def _frame(codec: Codec, msg) -> bytes:
    out = bytearray()
    codec.pack(msg, out)
    return bytes(out)


def test_partial_frames_wait_for_the_rest() -> None:
    codec = Codec(FrontMessage)
    stream = b"".join(_frame(codec, m) for m in (Call(1, "stats"), State(True, False), Reply(1, {"a": 1})))
    buf = bytearray()
    got = []
    for i in range(0, len(stream), 3):  # three bytes at a time, as a socket might deliver them
        buf += stream[i:i + 3]
        got += codec.unpack(buf)
    assert got == [Call(1, "stats"), State(True, False), Reply(1, {"a": 1})] and not buf
    with pytest.raises(ValueError, match="corrupt"):
        codec.unpack(bytearray(b"\xff\xff\xff\xff" + b"x" * 8))


@pytest.mark.parametrize("cls", [errors.QueueFullError, errors.PoolClosed, errors.DeadlineExceeded,
                                 errors.InputError, errors.ConfigError, errors.WorkerError, errors.DeviceError])
def test_errors_cross_as_the_same_class(cls: type) -> None:
    r = error_reply(3, cls("what went wrong"))
    out = bytearray()
    Codec(FrontMessage).pack(r, out)
    (back,) = Codec(FrontMessage).unpack(out)
    exc = error_from(back.error)
    assert type(exc) is cls and str(exc) == "what went wrong"


def test_foreign_errors_become_worker_errors() -> None:
    exc = error_from(ErrorInfo("ZeroDivisionError", "division by zero"))
    assert type(exc) is errors.WorkerError and "ZeroDivisionError: division by zero" in str(exc)
    assert type(error_from(ErrorInfo("HTTPError", "x"))) is errors.WorkerError
