"""The process backend's parts without processes: wire codec over shared memory, segment reuse and cleanup,
circuit breaker, device placement checks, model pickling, config."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from gpufleet import Pool, PoolConfig
from gpufleet.devices import Device
from gpufleet.engine import wire as m
from gpufleet.engine.breaker import CircuitBreaker
from gpufleet.engine.process.child import is_sticky_cuda_error
from gpufleet.engine.process.placement import GPU_CHILD_THREADS, model_blob, pin_env, verify_placement
from gpufleet.engine.process.shm import Attachments, SegmentPool, leaked_segments, unlink_prefix
from gpufleet.engine.wire import INLINE_MAX, Codec
from gpufleet.errors import ConfigError, DeviceError
from tests.engine.process_models import Doubler, double

PREFIX = "gpufleet_test_wire_"


@pytest.fixture
def pair():
    """A sender codec and a receiver codec (copying, like the parent) over one segment pool."""
    pool = SegmentPool(PREFIX)
    send = Codec(m.ChildMessage, segments=pool, attachments=Attachments(), copy=False)
    recv = Codec(m.ChildMessage, segments=SegmentPool(PREFIX + "r"), attachments=Attachments(), copy=True)
    yield pool, send, recv
    recv.attachments.close()
    pool.close()
    unlink_prefix(PREFIX)


def roundtrip(send: Codec, recv: Codec, pool: SegmentPool, items: list) -> list:
    prepared, need = send.prepare(items)
    seg = pool.acquire(need) if need else None
    msg = recv.decode(send.encode(m.Batch(7, prepared), seg))
    if seg is not None:
        pool.release(seg.name)
    assert isinstance(msg, m.Batch) and msg.id == 7
    return msg.items


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int64", "float16", "float32", "float64", "bool", "complex64"])
@pytest.mark.parametrize("shape", [(), (3,), (7, 5), (2, 3, 224, 224)])
def test_arrays_roundtrip_bit_exact(pair, dtype, shape) -> None:
    pool, send, recv = pair
    rng = np.random.default_rng(0)
    a = np.asarray(rng.standard_normal(shape) * 100).astype(dtype)
    [b] = roundtrip(send, recv, pool, [a])
    assert b.dtype == a.dtype and b.shape == a.shape
    assert a.tobytes() == b.tobytes()


def test_mixed_batch_and_containers(pair) -> None:
    pool, send, recv = pair
    big = np.arange(3 * 512 * 512, dtype=np.uint8).reshape(3, 512, 512)
    small = np.arange(6, dtype=np.float32).reshape(2, 3)
    strided = np.arange(400_000, dtype=np.int32).reshape(800, 500)[::2, ::3]
    items = [big, small, strided, {"a": [1, 2.5, "x", None], "img": big}, (1, (2, 3)), b"\x00" * 200_000,
             b"tiny", "text", 3, np.float32(1.5), {1, 2}, Fraction(1, 3)]
    out = roundtrip(send, recv, pool, items)
    assert out[0].tobytes() == big.tobytes() and out[1].tobytes() == small.tobytes()
    assert np.array_equal(out[2], strided)
    assert out[3]["a"] == [1, 2.5, "x", None] and np.array_equal(out[3]["img"], big)
    assert out[4] == (1, (2, 3)) and isinstance(out[4], tuple)
    assert out[5] == b"\x00" * 200_000 and out[6] == b"tiny" and out[7] == "text" and out[8] == 3
    assert out[9] == 1.5
    assert out[10] == [1, 2]  # sets travel as msgpack arrays
    assert out[11] == Fraction(1, 3)  # not msgpack: pickled (small objects only)


def test_torch_tensors_keep_type_and_dtype(pair) -> None:
    pool, send, recv = pair
    ts = [torch.randn(3, 64, 64), torch.randn(5).to(torch.bfloat16), torch.arange(10, dtype=torch.int64),
          torch.randn(2, 3, requires_grad=True), torch.randn(300, 300).to(torch.bfloat16)]
    out = roundtrip(send, recv, pool, ts)
    for t, u in zip(ts, out):
        assert isinstance(u, torch.Tensor) and u.dtype == t.dtype and u.shape == t.shape
        assert torch.equal(t.detach(), u)


def stack_roundtrip(send: Codec, recv: Codec, pool: SegmentPool, items: list):
    block, need = send.stack(items)
    if block is None:
        return None
    seg = pool.acquire(need)
    msg = recv.decode(send.encode(m.Batch(8, stacked=block), seg))
    pool.release(seg.name)
    assert isinstance(msg, m.Batch) and msg.items == []
    return msg.stacked


def test_items_of_one_shape_and_dtype_travel_as_one_block(pair) -> None:
    pool, send, recv = pair
    rng = np.random.default_rng(2)
    arrays = [rng.integers(0, 256, (3, 40, 40), dtype=np.uint8) for _ in range(5)]
    block = stack_roundtrip(send, recv, pool, arrays)
    assert isinstance(block, np.ndarray) and block.shape == (5, 3, 40, 40) and np.array_equal(block, np.stack(arrays))
    tensors = [torch.randn(3, 40, 40).half() for _ in range(4)]
    tensors[1] = tensors[1].transpose(1, 2)  # not contiguous: copied row by row all the same
    block = stack_roundtrip(send, recv, pool, tensors)
    assert isinstance(block, torch.Tensor) and block.dtype == torch.float16 and torch.equal(block, torch.stack(tensors))


@pytest.mark.parametrize("items", [
    [np.zeros((3, 40, 40), np.uint8)],  # one item
    [np.zeros((3, 40, 40), np.uint8), np.zeros((3, 40, 41), np.uint8)],  # shapes differ
    [np.zeros((3, 40, 40), np.uint8), np.zeros((3, 40, 40), np.int16)],  # dtypes differ
    [np.zeros((3, 40, 40), np.uint8), torch.zeros((3, 40, 40), dtype=torch.uint8)],  # kinds differ
    [np.zeros(16, np.uint8)] * 4,  # small: inline
    [torch.zeros(3, 40, 40, dtype=torch.bfloat16)] * 2,  # no numpy dtype
    [torch.zeros(3, 40, 40, requires_grad=True)] * 2,
    [b"x" * 100_000] * 2,
], ids=["one", "shapes", "dtypes", "kinds", "small", "bf16", "grad", "bytes"])
def test_other_batches_are_not_stacked(pair, items) -> None:
    pool, send, recv = pair
    assert send.stack(items) == (None, 0)


def test_small_arrays_inline_large_in_shared_memory(pair) -> None:
    pool, send, _ = pair
    _, need = send.prepare([np.zeros(INLINE_MAX, np.uint8)])
    assert need == 0
    _, need = send.prepare([np.zeros(INLINE_MAX + 1, np.uint8), np.zeros(10, np.uint8)])
    assert need >= INLINE_MAX + 1


def test_segments_are_reused_and_cleaned_up() -> None:
    pool = SegmentPool(PREFIX + "reuse_", keep=2)
    try:
        a = pool.acquire(10_000)
        pool.release(a.name)
        b = pool.acquire(5_000)
        assert b.name == a.name  # reused, not one segment per message
        c = pool.acquire(50 << 20)  # too big for the free one: a new segment
        assert c.name != b.name and c.size >= 50 << 20
        assert len(leaked_segments(PREFIX + "reuse_")) == 2
        pool.release(b.name)
        pool.release(c.name)
    finally:
        pool.close()
    assert leaked_segments(PREFIX + "reuse_") == []


def test_breaker_cycle_with_fake_clock() -> None:
    now = [0.0]
    b = CircuitBreaker(threshold=2, cooldown_s=5.0, clock=lambda: now[0])
    b.failure("crash")
    assert b.state == "closed" and b.allows_traffic
    b.failure("crash")
    assert b.state == "open" and not b.allows_traffic and b.trips == 1
    now[0] = 4.0
    assert not b.poll() and b.state == "open"
    now[0] = 5.5
    assert b.poll() and b.state == "half-open" and b.allows_traffic
    b.failure("again")  # the probe failed: open again with a longer cool-down
    assert b.state == "open" and b.cooldown_s == 10.0 and b.trips == 2
    now[0] = 16.0
    b.poll()
    assert b.success() and b.state == "closed" and b.failures == 0
    assert b.describe()["worker_failures"] == 3


def test_sticky_cuda_errors_recognised() -> None:
    assert is_sticky_cuda_error(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_sticky_cuda_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert is_sticky_cuda_error(RuntimeError("unspecified launch failure"))
    assert not is_sticky_cuda_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_sticky_cuda_error(ValueError("shape mismatch"))


GPU = Device(index=1, kind="cuda", name="NVIDIA H100", uuid="GPU-aaaa-1111", physical_index=3)


def test_pin_env_and_placement_check(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    small = {"OMP_NUM_THREADS": str(GPU_CHILD_THREADS), "MKL_NUM_THREADS": str(GPU_CHILD_THREADS)}
    assert pin_env(GPU, 16) == {"CUDA_VISIBLE_DEVICES": "GPU-aaaa-1111", **small}  # GPU children: few threads
    assert pin_env(Device(index=0, kind="cuda", name="X", physical_index=2)) == {"CUDA_VISIBLE_DEVICES": "2",
                                                                                  **small}
    assert pin_env(Device(index=0, kind="cpu"), 16) == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "16",
                                                        "MKL_NUM_THREADS": "16"}
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice wins
    assert "OMP_NUM_THREADS" not in pin_env(GPU, 16)
    env = pin_env(GPU)
    verify_placement("w", GPU, m.Hello(pid=1, kind="cuda", current_device=0, name="NVIDIA H100",
                                       uuid="GPU-aaaa-1111"), env)
    with pytest.raises(DeviceError, match="not on the intended GPU cuda:1.*GPU-bbbb"):
        verify_placement("w", GPU, m.Hello(pid=1, kind="cuda", current_device=0, name="NVIDIA H100",
                                           uuid="GPU-bbbb-2222", visible="GPU-aaaa-1111"), env)
    with pytest.raises(DeviceError, match="current device is cuda:1"):
        verify_placement("w", GPU, m.Hello(pid=1, kind="cuda", current_device=1, name="NVIDIA H100",
                                           uuid="GPU-aaaa-1111"), env)
    verify_placement("w", Device(index=0, kind="cpu"), m.Hello(pid=1, kind="cpu"), {})


def test_models_must_cross_a_process_boundary() -> None:
    assert model_blob(Doubler) and model_blob(double) and model_blob("orientation") and model_blob(Doubler())
    with pytest.raises(ConfigError, match="a lambda cannot be pickled.*backend='thread'"):
        model_blob(lambda batch: batch)

    def local(batch):
        return batch

    with pytest.raises(ConfigError, match="local"):
        model_blob(local)
    with pytest.raises(ConfigError, match="lambda"):
        Pool(lambda batch: batch, cpu_devices=1, backend="process")


def test_config_validation() -> None:
    assert PoolConfig(backend="process").max_retries == 2
    for bad in ({"max_retries": -1}, {"batch_timeout_s": 0}, {"heartbeat_timeout_s": 0}, {"mps": "maybe"},
                {"breaker_threshold": 0}, {"restart_backoff_s": -1}, {"backend": "fork"}):
        with pytest.raises(ConfigError):
            PoolConfig(**bad)
    with pytest.raises(ConfigError, match="max_batch_size=0"):
        Pool(double, cpu_devices=1, backend="process", max_batch_size=0)
