"""The process worker's child: pin the device, set the model up, then serve batches until told to stop.

Runs in a ``multiprocessing`` *spawn* child. ``CUDA_VISIBLE_DEVICES`` is set to the one GPU before anything
touches CUDA (the model arrives pickled and is only unpickled afterwards), so the child sees its GPU as
``cuda:0``. It reports the device of its CUDA context (:class:`Hello`) before ``setup`` so the parent can
check the placement, then runs preprocess → predict → postprocess per batch. A heartbeat thread proves the
process is alive while ``predict`` runs; a sticky CUDA error ends the process after reporting it, because
every later kernel in that context would fail too.

Inside ``predict``, :func:`gpufleet.report_progress` sends progress to the parent (the items' callbacks, stats).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import msgspec

from gpufleet.devices.device import Device
from gpufleet.engine import wire
from gpufleet.engine.oom import is_sticky_cuda_error
from gpufleet.engine.process.shm import Attachments, SegmentPool
from gpufleet.engine.process.spare import FAILED, IMPORTED, SETTING_UP, WARM, set_state
from gpufleet.engine.progress import reporting_to
from gpufleet.engine.step import BatchStep, poll_interval
from gpufleet.errors import GpufleetError
from gpufleet.models.base import StackedBatch, setup_model

__all__ = ["STICKY_EXIT", "ChildSpec", "is_sticky_cuda_error", "main"]

log = logging.getLogger(__name__)

STICKY_EXIT = 70  # exit status after a sticky CUDA error


@dataclass
class ChildSpec:
    """What a child needs; pickled once by ``multiprocessing`` at spawn (the model stays bytes until the
    environment is set)."""

    worker: int
    device: Device  # as the child sees it (cuda:0 after pinning)
    name: str = ""  # the worker's name in the pool (its errors carry it)
    env: dict[str, str] = field(default_factory=dict)
    model: bytes = b""
    prefix: str = "gpufleet_"
    heartbeat_s: float = 0.5
    batch_buckets: tuple[int, ...] | None = None
    max_batch_size: int = 0  # the pool's (0: probed), for models that size graphs or warm-up by it
    log_level: int = logging.WARNING
    restart: bool = False  # a replacement: warm up what serving needs first, the rest after Ready
    spare: bool = False  # spawned ahead of need: import, then wait for ``Start`` (or ``Warm``, see spare.py)

def _hello(device: Device) -> wire.Hello:
    """Initialise the device and say which one the context is on."""
    hello = wire.Hello(pid=os.getpid(), kind=device.kind, visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
    if device.is_cuda:
        import torch

        torch.cuda.set_device(device.index)
        cur = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(cur)
        uuid = str(getattr(props, "uuid", "") or "")
        if uuid and not uuid.upper().startswith(("GPU-", "MIG-")):
            uuid = "GPU-" + uuid
        hello.current_device, hello.name, hello.uuid = cur, str(props.name), uuid
    return hello


class HostPins:
    """Registers the parent's shared-memory segments with CUDA as pinned memory, once each, so a batch that
    arrives as one block is copied to the GPU straight from the segment (DMA), with no host copy in between.
    A segment that cannot be registered is simply read as pageable memory (the model stages it)."""

    def __init__(self) -> None:
        self._ptrs: dict[str, int] = {}
        self._failed = False

    def register(self, seg: Any) -> None:
        if self._failed:
            return
        import numpy as np
        import torch

        view = np.frombuffer(seg.buf, dtype=np.uint8)
        ptr = int(view.ctypes.data)
        del view  # no export of the buffer may outlive this call, or the segment cannot be closed
        try:
            err = int(torch.cuda.cudart().cudaHostRegister(ptr, seg.size, 0))
        except Exception as exc:  # noqa: BLE001 - pinning is an optimisation
            err = -1
            log.debug("cudaHostRegister: %s", exc)
        if err != 0:
            self._failed = True  # e.g. a driver limit: every batch is staged instead
            log.info("shared memory cannot be pinned for DMA (cudaError %d); batches are staged on the host", err)
            try:  # the failed call left its error as CUDA's last error: the next launch check reads and clears it
                torch.empty(1, device="cuda").fill_(0)
            except RuntimeError:
                pass
            return
        self._ptrs[seg.name] = ptr

    def unregister(self, seg: Any) -> None:
        ptr = self._ptrs.pop(seg.name, None)
        if ptr is not None:
            import torch

            try:
                torch.cuda.synchronize()  # no copy may still read it
                torch.cuda.cudart().cudaHostUnregister(ptr)
            except Exception as exc:  # noqa: BLE001 - the mapping goes anyway; never fail the child's exit
                log.debug("cudaHostUnregister: %s", exc)


class _Child:
    def __init__(self, conn: Any, spec: ChildSpec) -> None:
        self.conn = conn
        self.spec = spec
        self.pool = SegmentPool(f"{spec.prefix}c")
        pins = HostPins() if spec.device.is_cuda else None
        attach = Attachments(pins.register, pins.unregister) if pins is not None else Attachments()
        self.codec = wire.Codec(wire.ChildMessage, segments=self.pool, attachments=attach, copy=False)
        self._send_lock = threading.Lock()
        self._plain = __import__("msgspec").msgpack.Encoder()
        self.model: Any = None
        self.step: BatchStep | None = None
        self.idle_s = 0.0  # seconds waited for a batch with nothing on the device, since the last BatchDone

    def send(self, msg: Any) -> None:
        data = self._plain.encode(msg)
        with self._send_lock:
            self.conn.send_bytes(data)

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.spec.heartbeat_s):
            try:
                self.send(wire.Heartbeat(time.time()))
            except (OSError, ValueError):
                return  # the parent is gone; the main loop sees EOF

    def setup(self, t_main: float, loaded: Any = None, *, defer: bool = False) -> bool:
        """Set the model up and say Ready with where the time went (``t_main``: when this start-up began;
        ``loaded``: the model, unpickled already by a spare; ``defer``: a replacement, which warms up what
        serving needs first and the rest after Ready)."""
        from gpufleet.engine.process.placement import load_model_blob
        from gpufleet.models.base import apply_pool_settings
        from gpufleet.models.resolve import model_factory

        timings: dict[str, float] = {}
        try:
            t = time.monotonic()
            self.send(_hello(self.spec.device))
            t, timings["cuda_context"] = time.monotonic(), time.monotonic() - t
            model = model_factory(loaded if loaded is not None else load_model_blob(self.spec.model))()
            # As thread workers do: without the max batch size the embedded classifier captured graphs up to
            # 64 only, and served batches of 65-128 ran eagerly, autotuning cuDNN for every new size (2x H200,
            # serving JPEGs with --backend process: p99 843 ms).
            apply_pool_settings(model, batch_buckets=self.spec.batch_buckets, max_batch_size=self.spec.max_batch_size)
            if defer and hasattr(model, "defer_warmup"):
                model.defer_warmup = True  # a replacement serves first; finish_warmup() runs after Ready
            t, timings["model_load"] = time.monotonic(), time.monotonic() - t
            setup_model(model, self.spec.device)
            setup_s = time.monotonic() - t
            parts = {k: float(v) for k, v in (getattr(model, "setup_timings", None) or {}).items()}
            timings.update(parts)  # e.g. TorchModel: weights, cuda_graphs, warmup
            timings["setup_other" if parts else "setup"] = max(0.0, setup_s - sum(parts.values()))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
            self.send(wire.SetupFailed(wire.error_info(exc, with_traceback=True)))
            return False
        t = time.monotonic()
        self.model = model
        gc.collect()
        gc.freeze()  # the model and imports live as long as this process: keep them out of full GC passes
        self.step = step = BatchStep(model, self.spec.device, self.spec.name or f"worker-{self.spec.worker}")
        timings["gc_freeze"] = time.monotonic() - t
        self.send(wire.Ready(step.pre is not None, step.post is not None, t_main, timings))
        finish = getattr(model, "finish_warmup", None)
        if defer and callable(finish):
            threading.Thread(target=_finish_warmup, args=(finish,), name="gpufleet-warmup", daemon=True).start()
        return True

    def serve(self) -> None:
        # Models with launch/collect keep two batches in flight, as thread workers do: the next batch (the
        # parent sends up to three) is stacked, copied and launched before the previous one is collected, so the
        # GPU does not idle while this process answers, decodes and stacks. Measured on one H200: a process
        # worker ran ResNet-50 at batch 64 at half a thread worker's rate when it served one batch at a time.
        step = self.step
        assert step is not None
        pending: _Work | None = None
        while True:
            try:
                idle = pending is not None and not self._next_before_done(pending, step.ready)
                waits = pending is None  # nothing on the device: the wait for a batch is idle time
                t = time.monotonic()
                data = None if idle else self.conn.recv_bytes()
                if waits:
                    self.idle_s += time.monotonic() - t
            except (EOFError, OSError):
                return  # the parent closed the pipe or died
            if data is None:
                assert pending is not None
                self.finish(pending)  # done, and nothing else queued: answer now rather than wait for more
                pending = None
                continue
            msg = self.codec.decode(data)
            if isinstance(msg, wire.Batch):
                if msg.dropped:  # the parent unlinked these segments: unmap them (and unpin them) here too
                    self.codec.attachments.drop(msg.dropped)
                work = self.begin(msg)
                if pending is not None:
                    self.finish(pending)
                pending = work if step.pipelined else None
                if not step.pipelined and work is not None:
                    self.finish(work)
            elif isinstance(msg, wire.Free):
                for name in msg.segments:
                    self.pool.release(name)
            elif isinstance(msg, wire.Shutdown):
                if pending is not None:
                    self.finish(pending)
                return

    def _next_before_done(self, pending: _Work, ready: Any) -> bool:
        """While the device runs ``pending``, wait for the next message: True as soon as one is waiting (it is
        launched before ``pending`` is collected), False once the device has finished ``pending`` first (or at
        once for models that cannot tell, without ``ready(handle)``). Collecting as soon as nothing was queued
        left the GPU idle from the end of that batch until the next one was received, decoded and launched
        (2x H200, pool overhead run: the children spent half their time there, at 77% of the GPU's rate)."""
        if self.conn.poll():
            return True
        if ready is None or pending.handle is None:
            return False
        while True:
            try:
                if ready(pending.handle):
                    return self.conn.poll()
            except Exception:  # noqa: BLE001 - collect() reports the batch's error
                return False
            if self.conn.poll(poll_interval(time.monotonic() - pending.t0)):
                return True

    def _progress_to(self, batch_id: int, alive: list[int]) -> None:
        """This thread's ``report_progress`` calls go to the parent as progress of batch ``batch_id`` (whose
        ``alive`` items ``predict`` sees, in order) until ``reporting_to(None)``."""
        send = self.send

        def sink(value: Any, index: int | None) -> None:
            send(wire.Progress(batch_id, value, None if index is None else alive[index]))

        reporting_to(sink)

    def begin(self, batch: wire.Batch) -> _Work | None:
        """Preprocess a batch and, for launch/collect models, start it on the device; ``None`` if it was
        answered already (its launch failed)."""
        step = self.step
        assert step is not None
        items = batch.items if batch.stacked is None else StackedBatch(batch.stacked)
        timings: dict[str, float] = {}
        alive, errors = step.begin(items, batch.preprocessed, timings)
        work = _Work(batch, items, alive, errors, timings)
        if step.pipelined and alive:
            self._progress_to(batch.id, alive)
            try:
                # None when it ran out of memory: complete() predicts in parts
                work.handle = step.launch(step.alive_items(items, alive))
                timings["launch"] = time.monotonic() - work.t0
            except GpufleetError as err:
                self._failed(batch, err)
                return None
            finally:
                reporting_to(None)
        return work

    def finish(self, work: _Work) -> None:
        """Collect (or run) a begun batch, postprocess it and answer the parent."""
        step = self.step
        assert step is not None
        batch, items, alive, errors, timings = work.batch, work.items, work.alive, work.errors, work.timings
        self._progress_to(batch.id, alive)
        collect_from = time.monotonic()
        try:
            outputs, media = step.complete(items, alive, errors, work.handle, work.t0, timings)
            if work.handle is not None:  # launched ahead: the wait for its results (as the thread loop reports)
                timings["collect"] = max(0.0, work.t0 + timings.get("predict", 0.0) - collect_from)
        except GpufleetError as err:
            self._failed(batch, err)
            return
        finally:
            reporting_to(None)
        del items, work.items, batch.items, batch.stacked  # drop views into the parent's segment before answering
        prepared, need = self.codec.prepare(outputs)
        seg = self.pool.acquire(need) if need else None
        infos = {i: wire.error_info(e, with_traceback=True) for i, e in errors.items()}
        res = wire.BatchDone(batch.id, prepared, infos, None, timings, step.oom_batch, media, step.isolated,
                             segments=[seg.name] if seg is not None else [], dropped=self.pool.dropped,
                             idle_s=self.idle_s)
        self.idle_s = 0.0  # reported: the parent adds it up
        self.pool.dropped = []
        try:
            data = self.codec.encode(res, seg)
        except Exception as exc:  # noqa: BLE001 - e.g. an output that neither msgpack nor pickle can carry
            if seg is not None:
                self.pool.release(seg.name)
            self._failed(batch, step.error(exc), dropped=res.dropped)
            return
        with self._send_lock:
            self.conn.send_bytes(data)

    def _failed(self, batch: wire.Batch, err: GpufleetError, dropped: list[str] | None = None) -> None:
        """The whole batch failed: answer it with the error; a sticky CUDA error ends us."""
        cause = err.__cause__ if err.__cause__ is not None else err
        sticky = is_sticky_cuda_error(cause)
        self.send(wire.BatchDone(batch.id, error=wire.error_info(err, with_traceback=True, sticky=sticky),
                                 oom_batch=self.step.oom_batch if self.step else 0, dropped=dropped or []))
        if sticky:  # every later kernel in this context would fail: let the parent recycle us
            os._exit(STICKY_EXIT)


def _finish_warmup(finish: Any) -> None:
    try:
        finish()
    except Exception:  # noqa: BLE001 - what is not warmed up is prepared on first use instead
        log.exception("warming up after the restart failed")


def _next_order(conn: Any) -> wire.Start | wire.Warm | None:
    """A spare: wait until the parent needs us (``Start``), wants us warm (``Warm``) or lets us go (``None``)."""
    try:
        msg = msgspec.msgpack.decode(conn.recv_bytes(), type=wire.ChildMessage)
    except (EOFError, OSError, msgspec.DecodeError):
        return None
    return msg if isinstance(msg, (wire.Start, wire.Warm)) else None


class _Work:
    """A batch between :meth:`_Child.begin` and :meth:`_Child.finish`."""

    __slots__ = ("batch", "items", "alive", "errors", "timings", "handle", "t0")

    def __init__(self, batch: wire.Batch, items: list, alive: list[int], errors: dict, timings: dict) -> None:
        self.batch, self.items, self.alive, self.errors, self.timings = batch, items, alive, errors, timings
        self.handle: Any = None
        self.t0 = time.monotonic()


def main(conn: Any, spec: ChildSpec, state: Any = None) -> None:
    """Entry point of the spawned child (``multiprocessing`` target); ``state``: a spare's shared state byte
    (see :mod:`gpufleet.engine.process.spare`)."""
    os.environ.update(spec.env)  # before the model is unpickled or CUDA initialised
    # Ctrl-C, and a SIGTERM sent to the whole process group (systemd, `timeout`, `kill -TERM -pgid`), go to
    # the parent, which drains and then stops us; we exit on its Shutdown message, on EOF, or by SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=spec.log_level, format=f"%(asctime)s %(levelname)s worker-{spec.worker}: %(message)s")
    loaded = None
    child: _Child | None = None
    if spec.spare:  # imports are done (this module's); load the model's too, then wait to be needed
        loaded, child = _spare(conn, spec, state)
    t_main = time.monotonic()
    if child is None:
        child = _Child(conn, spec)
    stop = threading.Event()
    threading.Thread(target=child._heartbeat, args=(stop,), name="gpufleet-heartbeat", daemon=True).start()
    try:
        if child.step is not None or child.setup(t_main, loaded, defer=spec.restart):
            child.serve()
    finally:
        stop.set()
        child.pool.close()
        child.codec.attachments.close()
    _leave()


def _spare(conn: Any, spec: ChildSpec, state: Any) -> tuple[Any, _Child | None]:
    """A spare's life until ``Start``: unpickle the model, wait; told ``Warm``, set it up completely first.
    Returns the model (unpickled, or ``None``) and, for a warm spare, the child that is set up."""
    from gpufleet.engine.process.placement import load_model_blob

    try:
        loaded = load_model_blob(spec.model)
    except BaseException:  # noqa: BLE001 - setup loads it again and reports the error
        loaded = None
    _prepare_spare(loaded)
    set_state(state, IMPORTED)
    order = _next_order(conn)
    if order is None:
        os._exit(0)
    if isinstance(order, wire.Start):
        return loaded, None
    set_state(state, SETTING_UP)
    child = _Child(conn, spec)
    # Its Hello and Ready wait in the pipe until the parent takes it over; the setup is the first start's
    # (nothing deferred): a warm spare is meant to serve at full speed from its first batch.
    if not child.setup(time.monotonic(), loaded):
        set_state(state, FAILED)  # the parent reads why from the pipe and keeps imports-only spares instead
        child.pool.close()
        _leave()
    set_state(state, WARM)
    if _next_order(conn) is None:
        child.pool.close()
        child.codec.attachments.close()
        _leave()
    return loaded, child


def _prepare_spare(loaded: Any) -> None:
    """The model's optional ``prepare_spare()``: what its setup needs that touches no device (e.g. importing
    torchvision's model definitions: 5-6 s of a ResNet-50 restart on a busy H100 host), done while waiting."""
    try:
        if isinstance(loaded, str):  # an embedded model's name (``gpufleet serve resnet50``): its instance has it
            from gpufleet.models.resolve import resolve_model

            loaded = resolve_model(loaded)
        hook = None if loaded is None or isinstance(loaded, type) else getattr(loaded, "prepare_spare", None)
        if callable(hook):
            hook()
    except Exception as exc:  # noqa: BLE001 - setup does that work then, and reports what fails
        log.warning("prepare_spare failed (%s: %s); the setup does that work at the restart", type(exc).__name__, exc)


def _leave() -> NoReturn:
    # Done, all answered: leave without the interpreter's teardown, where a library's still-running C++ thread
    # aborted every child with "terminate called without an active exception" (and teardown only costs time).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def child_device(device: Device) -> Device:
    """The device as a pinned child sees it: the one visible GPU is ``cuda:0``."""
    return replace(device, index=0) if device.is_cuda else device
