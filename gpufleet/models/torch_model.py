"""``TorchModel``: a PyTorch module served fast — precision by architecture, channels_last, pinned and
reused staging buffers, host→device copies on a side stream overlapped with the previous batch's compute.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from gpufleet.devices.device import Device
from gpufleet.errors import ConfigError, InputError
from gpufleet.models.base import Model, stacked_rows
from gpufleet.models.cuda_graphs import GraphCache

__all__ = ["TorchModel", "resolve_dtype"]

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(precision: str, device: Device) -> torch.dtype:
    """The compute dtype for ``precision`` ("auto" = the device's recommended one; always fp32 on CPU)."""
    if precision == "auto":
        precision = device.precision if device.is_cuda else "fp32"
    try:
        return _DTYPES[precision]
    except KeyError:
        raise ConfigError(f"unknown precision {precision!r}; choose auto, fp32, fp16 or bf16") from None


_local = threading.local()


def _serial_here() -> bool:
    """Make this thread's CPU ops single-threaded, leaving the others' thread count as it was; True if it is.

    OpenMP keeps the thread count per thread: after ``torch.get_num_threads()`` has set up this thread's own,
    ``torch.set_num_threads(1)`` here and the old count restored from a helper thread change only this thread.
    Where the count is process-wide (a build without OpenMP) this thread keeps it and False comes back.
    """
    serial = getattr(_local, "serial", None)
    if serial is None:
        n = torch.get_num_threads()
        if n > 1:
            torch.set_num_threads(1)
            restore = threading.Thread(target=torch.set_num_threads, args=(n,), name="gpufleet-threads")
            restore.start()
            restore.join()
        serial = _local.serial = torch.get_num_threads() == 1
    return serial


class _Launch:
    """One batch in flight: its size, host outputs (pinned, filled asynchronously) and the events to wait on."""

    __slots__ = ("n", "out", "done", "marks", "batch_s", "compute_s", "extra")

    def __init__(self, n: int, out: Any, done: Any = None, marks: tuple | None = None, batch_s: float = 0.0,
                 compute_s: float = 0.0) -> None:
        self.n, self.out, self.done, self.marks = n, out, done, marks
        self.batch_s, self.compute_s = batch_s, compute_s  # host-side batch assembly; CPU devices' forward
        self.extra: Any = None  # for subclasses: per-batch state carried from launch to collect


class TorchModel(Model):
    """Serve a ``torch.nn.Module``: pass one (or a zero-argument function that builds one), or override
    :meth:`load`. Items are arrays/tensors of one shape; :meth:`transform` runs on the device batch (e.g.
    uint8 → normalised float), :meth:`finalize` on the device output (e.g. softmax + top-1).
    With ``cuda_graphs=True`` the whole device step (transform, module, finalize) is captured once per batch
    bucket (``batch_buckets``, default 1, 2, 4 … 256) and replayed, which removes per-layer launch cost.

    >>> import torch
    >>> m = TorchModel(torch.nn.Linear(4, 2))
    """

    def __init__(
        self,
        module: torch.nn.Module | Callable[[], torch.nn.Module] | None = None,
        *,
        precision: str = "auto",
        channels_last: bool = True,
        example_shape: Sequence[int] | None = None,
        example_dtype: torch.dtype = torch.float32,
        warmup_batch_sizes: Sequence[int] = (1,),
        compile: bool = False,
        cuda_graphs: bool = False,
        batch_buckets: Sequence[int] | None = None,
        staging_slots: int = 3,
    ) -> None:
        if precision != "auto" and precision not in _DTYPES:
            raise ConfigError(f"unknown precision {precision!r}; choose auto, fp32, fp16 or bf16")
        self._source = module
        self.precision = precision
        self.channels_last = channels_last
        self.example_shape = tuple(example_shape) if example_shape is not None else None
        self.example_dtype = example_dtype
        self.warmup_batch_sizes = tuple(warmup_batch_sizes)
        self.compile = compile
        self.cuda_graphs = cuda_graphs
        self.batch_buckets = tuple(batch_buckets) if batch_buckets else None
        self.staging_slots = max(2, staging_slots)
        self.last_timings: dict[str, float] = {}
        self.module: Any = None  # the nn.Module (or its torch.compile wrapper) once set up
        # A replacement worker (process restart) sets this: setup then captures only the largest warm-up
        # size's graphs (what a backlog is served with) and finish_warmup(), run after serving resumed,
        # captures the rest.
        self.defer_warmup = False
        self.setup_timings: dict[str, float] = {}  # where setup's time went: weights, cuda_graphs, warmup
        self._deferred: tuple[int, ...] = ()
        self._capturing = False  # finish_warmup has deferred graphs left to capture

    # -- hooks for subclasses -----------------------------------------------------------------------------
    def load(self, device: Device) -> torch.nn.Module:
        """Build the module (on CPU is fine: setup moves it). Default: the ``module`` given at construction."""
        src = self._source
        if src is None:
            raise NotImplementedError(f"{type(self).__name__}: pass a module or override load(device)")
        if isinstance(src, torch.nn.Module):
            return copy.deepcopy(src)
        return src()

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """On-device transform of the stacked batch before the module (identity by default)."""
        return x

    def finalize(self, y: Any) -> Any:
        """On-device transform of the module's output before it is copied back (identity by default)."""
        return y

    # -- set-up -------------------------------------------------------------------------------------------
    def setup(self, device: Device) -> None:
        t0 = time.perf_counter()
        self.device = device
        self.dtype = resolve_dtype(self.precision, device)
        self._dev = torch.device(device.torch)
        self._cuda = device.is_cuda
        if self._cuda:
            torch.cuda.set_device(self._dev)
            if device.tf32:
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        module: Any = self.load(device).eval().to(self._dev)
        if self.dtype != torch.float32:
            module = module.to(self.dtype)
        self._channels_last = self.channels_last and any(
            isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d)) for m in module.modules())
        if self._channels_last:
            module = module.to(memory_format=torch.channels_last)
        if self.compile:
            module = torch.compile(module)
        self.module = module
        self._staging: list[torch.Tensor | None] = [None] * self.staging_slots
        self._staged: list[Any] = [None] * self.staging_slots  # event: slot's last copy finished
        self._on_device: list[torch.Tensor | None] = [None] * self.staging_slots  # graph input, copied in ahead
        self._read: list[Any] = [None] * self.staging_slots  # event: slot's device buffer last read
        self._slot = 0
        self._graphs: GraphCache | None = None
        if self._cuda:
            self._stream = torch.cuda.Stream(self._dev)
            self._copy_stream = torch.cuda.Stream(self._dev)
            if self.cuda_graphs:
                self._graphs = GraphCache(self._forward, self._dev, self.batch_buckets)
            torch.cuda.synchronize(self._dev)
        t1 = time.perf_counter()
        timings = self.setup_timings = {"weights": t1 - t0}
        if self.example_shape is not None:
            sizes = self.warmup_batch_sizes
            if self.defer_warmup and self._graphs is not None and len(sizes) > 1:
                self._deferred, sizes = tuple(b for b in sizes if b != max(sizes)), (max(sizes),)
                self._capturing = True
            if self._graphs is not None:
                self._graphs.warm(sizes, self.example_shape, self.example_dtype)
                t2 = time.perf_counter()
                timings["cuda_graphs"], t1 = t2 - t1, t2
            for bs in sizes:
                example = torch.zeros((bs, *self.example_shape), dtype=self.example_dtype)
                self.predict(list(example.unbind(0)))
            if self._cuda:
                torch.cuda.synchronize(self._dev)
            timings["warmup"] = time.perf_counter() - t1
        log.info("%s on %s: dtype=%s channels_last=%s cuda_graphs=%s", type(self).__name__, device.label,
                 str(self.dtype).replace("torch.", ""), self._channels_last, self._graphs is not None)

    def finish_warmup(self) -> None:
        """Capture the graphs that ``defer_warmup`` left out, while serving (meanwhile a batch whose own bucket
        is not captured yet runs padded in a captured one)."""
        deferred, self._deferred = self._deferred, ()
        if deferred and self._graphs is not None and self.example_shape is not None:
            t = time.perf_counter()
            try:
                self._graphs.warm(deferred, self.example_shape, self.example_dtype)
            finally:
                self._capturing = False
            log.info("%s on %s: %d deferred CUDA graph bucket(s) captured in %.2fs", type(self).__name__,
                     self.device.label, len(deferred), time.perf_counter() - t)

    # -- serving ------------------------------------------------------------------------------------------
    def predict(self, batch: list) -> list:
        return self.collect(self.launch(batch))

    def launch(self, batch: list) -> _Launch:
        """Stack, copy and run one batch without waiting for the device; :meth:`collect` waits."""
        n = len(batch)
        t0 = time.perf_counter()
        if not self._cuda:
            x = self._stack(batch, None)
            t1 = time.perf_counter()
            with torch.inference_mode():
                out = self._forward(x)
            return _Launch(n, out, batch_s=t1 - t0, compute_s=time.perf_counter() - t1)
        slot = self._slot
        self._slot = (slot + 1) % self.staging_slots
        x = self._stack(batch, slot)
        batch_s = time.perf_counter() - t0
        if x.device.type != "cpu":  # items already on the GPU were stacked on the current stream
            self._stream.wait_stream(torch.cuda.current_stream(self._dev))
        bucket = self._graphs.bucket(n) if self._graphs is not None else None
        if bucket is not None and self._capturing:  # deferred graphs are being captured: pad into a ready one
            bucket = self._graphs.captured(bucket, x.shape[1:], x.dtype) or bucket  # type: ignore[union-attr]
        if bucket is not None:
            handle = self._launch_graph(x, n, bucket, slot)
            handle.batch_s = batch_s
            return handle
        with torch.inference_mode():
            marks = _marks()
            if x.device.type == "cpu":
                with torch.cuda.stream(self._copy_stream):
                    marks[0].record()
                    host = x
                    x = host.to(self._dev, non_blocking=True)
                    marks[1].record()
                self._staged[slot] = marks[1]  # the staging slot is free again once this copy is done
                self._stream.wait_event(marks[1])
            else:
                marks[0].record(self._stream)
                marks[1].record(self._stream)
            with torch.cuda.stream(self._stream):
                x.record_stream(self._stream)
                y = self._forward(x)
                marks[2].record()
                out = _tree(y, lambda t: _to_host_async(t))
                marks[3].record()
        return _Launch(n, out, marks[3], marks, batch_s)

    def _launch_graph(self, x: torch.Tensor, n: int, bucket: int, slot: int) -> _Launch:
        assert self._graphs is not None
        cap = self._graphs.get(bucket, x.shape[1:], x.dtype)
        marks = _marks()
        with torch.inference_mode():
            if x.device.type == "cpu":
                # The host copy lands in a device buffer of this staging slot, not in the graph's input: it then
                # overlaps the previous replay of the same graph instead of waiting for it (W2 at batch 128 lost
                # ~10% that way); a device-to-device copy into the graph's input, tens of µs, comes first.
                staged = self._device_buffer(slot, cap.x)
                with torch.cuda.stream(self._copy_stream):
                    if self._read[slot] is not None:  # the replay that read this buffer last has copied it
                        self._copy_stream.wait_event(self._read[slot])
                    marks[0].record()
                    staged[:n].copy_(x, non_blocking=True)
                    marks[1].record()
                self._staged[slot] = marks[1]
                self._stream.wait_event(marks[1])
                with torch.cuda.stream(self._stream):
                    cap.x[:n].copy_(staged[:n])
                    cap.graph.replay()
                    marks[2].record()
                    out = _tree(cap.y, lambda t: _to_host_async(t[:n]))
                    marks[3].record()
                self._read[slot] = marks[2]
            else:
                with torch.cuda.stream(self._stream):
                    # x was stacked on another stream: its memory must not be reused before this copy has run
                    # (it queues behind the previous replay), as the eager path does too.
                    x.record_stream(self._stream)
                    marks[0].record()
                    cap.x[:n].copy_(x)
                    marks[1].record()
                    cap.graph.replay()
                    marks[2].record()
                    out = _tree(cap.y, lambda t: _to_host_async(t[:n]))
                    marks[3].record()
        return _Launch(n, out, marks[3], marks)

    def ready(self, handle: _Launch) -> bool:
        """Whether :meth:`collect` would return at once (the device has finished the batch)."""
        return handle.done is None or handle.done.query()

    def collect(self, handle: _Launch) -> list:
        """Wait for a launched batch and split its output into one entry per item.

        Sets ``last_timings`` (seconds): ``batch`` (stacking on the host), and on CUDA ``h2d``, ``compute``
        (from the copy's end to the output on the device: includes waiting behind the previous batch) and
        ``d2h`` from CUDA events; on CPU ``compute`` is the forward pass.
        """
        if handle.done is not None:
            handle.done.synchronize()
            m = handle.marks
            assert m is not None
            self.last_timings = {"batch": handle.batch_s, "h2d": m[0].elapsed_time(m[1]) / 1e3,
                                 "compute": m[1].elapsed_time(m[2]) / 1e3, "d2h": m[2].elapsed_time(m[3]) / 1e3}
        else:
            self.last_timings = {"batch": handle.batch_s, "compute": handle.compute_s}
        return self.split(handle.out, handle.n)

    def split(self, out: Any, n: int) -> list:
        """One output per item from the batch's host output (row ``i`` of every tensor); models with small
        outputs override it to convert a whole batch at once."""
        return _split(out, n)

    def _forward(self, x: torch.Tensor) -> Any:
        x = self.transform(x)
        if x.is_floating_point() and x.dtype != self.dtype:
            x = x.to(self.dtype)
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.finalize(self.module(x))
        return _tree(y, lambda t: t.float() if t.is_floating_point() and t.dtype != torch.float32 else t)

    def _stack(self, batch: list, slot: int | None) -> torch.Tensor:
        """Stack items into one tensor; for CUDA, into a reused pinned staging buffer of ``slot``."""
        block = stacked_rows(batch)
        if block is not None:  # the rows of one block (a process worker's batch): one copy, no per-item work
            x = block if isinstance(block, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(block))
            if slot is None or x.device.type != "cpu" or x.is_pinned():
                return x  # pinned: a process worker's shared memory, registered for DMA (no host copy at all)
            buf = self._staging_buffer(slot, x.shape[0], x.shape[1:], x.dtype)
            try:
                np.copyto(buf.numpy()[: x.shape[0]], x.numpy(), casting="no")  # GIL released once, no OpenMP
            except (TypeError, RuntimeError):
                buf[: x.shape[0]].copy_(x)
            return buf[: x.shape[0]]
        first = batch[0]
        if isinstance(first, np.ndarray):
            items = [torch.from_numpy(np.ascontiguousarray(a)) for a in batch]
        elif isinstance(first, torch.Tensor):
            items = batch
        else:
            try:
                items = [torch.as_tensor(a) for a in batch]
            except Exception as exc:
                raise InputError(f"cannot make a tensor of a {type(first).__name__} item: {exc}") from exc
        shape = items[0].shape
        for t in items:
            if t.shape != shape:
                raise InputError(f"items of one batch must share a shape: got {tuple(shape)} and {tuple(t.shape)}")
        if slot is None or items[0].device.type != "cpu":
            return torch.stack(items)
        n = len(items)
        buf = self._staging_buffer(slot, n, shape, items[0].dtype)
        if _serial_here():
            # One C++ call for the whole batch, single-threaded in this thread: the GIL is released once, so a busy
            # Python thread beside it (the serving loop) cannot stretch it. W2 on an H100, 2026-12-08: 1.8 / 3.6 ms
            # per batch of 64 / 128 items of 150 KB against 3.5 / 6.5 ms as one numpy memcpy per item. A thread
            # count > 1 would run OpenMP regions that stall for whole scheduler ticks when several workers' thread
            # teams share the cores (2x H200: 2.8 -> 539 ms per batch of 64 with two process workers).
            with torch.no_grad():
                torch.stack(items, out=buf[:n])
            return buf[:n]
        try:  # this torch's CPU thread count is not per thread: one plain memcpy per item (numpy, GIL released)
            dst = buf.numpy()
            for i, t in enumerate(items):
                np.copyto(dst[i], t.numpy(), casting="no")
        except (TypeError, RuntimeError):  # no numpy dtype (bfloat16), or a tensor that needs grad
            torch.stack(items, out=buf[:n])
        return buf[:n]

    def _device_buffer(self, slot: int, like: torch.Tensor) -> torch.Tensor:
        """Slot ``slot``'s device buffer shaped as a graph input ``like`` (at least as many rows)."""
        buf = self._on_device[slot]
        if buf is None or buf.shape[1:] != like.shape[1:] or buf.dtype != like.dtype or buf.shape[0] < like.shape[0]:
            if buf is not None and self._read[slot] is not None:
                self._read[slot].synchronize()  # the old buffer may still be read by a queued copy
            buf = torch.empty_like(like)
            self._on_device[slot] = buf
        return buf

    def _staging_buffer(self, slot: int, n: int, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """Slot ``slot``'s pinned staging buffer, big enough for ``n`` items and free to overwrite."""
        buf = self._staging[slot]
        if buf is None or buf.shape[1:] != shape or buf.dtype != dtype or buf.shape[0] < n:
            cap = max(n, buf.shape[0] if buf is not None and buf.shape[1:] == shape else 0)
            buf = torch.empty((cap, *shape), dtype=dtype, pin_memory=True)
            self._staging[slot] = buf
        elif self._staged[slot] is not None:
            self._staged[slot].synchronize()  # its previous copy to the device must have finished
        return buf


def _marks() -> tuple:
    """Timing events: before the copy in, after it, after the forward pass, after the copy out."""
    return tuple(torch.cuda.Event(enable_timing=True) for _ in range(4))


def _tree(y: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(y, torch.Tensor):
        return fn(y)
    if isinstance(y, (list, tuple)):
        return type(y)(_tree(v, fn) for v in y)
    if isinstance(y, dict):
        return {k: _tree(v, fn) for k, v in y.items()}
    return y


def _to_host_async(t: torch.Tensor) -> torch.Tensor:
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


def _split(out: Any, n: int) -> list:
    """Per-item outputs: row i of every tensor in the (possibly nested) output."""
    if isinstance(out, torch.Tensor):
        return list(out.unbind(0))
    if isinstance(out, (list, tuple)):
        cols = [_split(v, n) for v in out]
        return [type(out)(c[i] for c in cols) for i in range(n)]
    if isinstance(out, dict):
        by_key = {k: _split(v, n) for k, v in out.items()}
        return [{k: c[i] for k, c in by_key.items()} for i in range(n)]
    raise TypeError(f"cannot split a model output of type {type(out).__name__} into items")
