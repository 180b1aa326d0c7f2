"""The thread backend: one worker per device on a thread of this process, fed by its own batcher.

The loop keeps up to ``pipeline_depth`` batches in flight for models that split ``predict`` into
``launch(batch)`` (enqueue the device work, return a handle) and ``collect(handle) -> list``, so the next
batch is assembled and copied while the device computes the previous one. Other models run ``predict``.
The pool runs the model's ``preprocess`` before items reach the batcher; ``postprocess`` runs on the pool's
threads, so this thread only feeds the device. A model with ``prepare_batch`` (the embedded
classifiers with ``GPUFLEET_DECODE_AHEAD=1``: JPEG decoding on the GPU) gets a second thread that takes batches
from the batcher and prepares each one while the previous one runs on the device, at most one prepared batch
waiting ahead of the loop; it takes a batch only when fewer than ``pipeline_depth`` are prepared or launched,
so requests gather in the batcher meanwhile.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from gpufleet.config import PoolConfig
from gpufleet.devices import select
from gpufleet.devices.device import Device
from gpufleet.devices.locks import CUDA_SETUP_LOCK
from gpufleet.engine.backend import Fleet, WorkerHooks
from gpufleet.engine.probe import FIXED_SIZES, ProbeResult, probe_worker_model
from gpufleet.engine.progress import reporting_to
from gpufleet.engine.request import Request
from gpufleet.engine.step import BatchStep
from gpufleet.engine.worker import BaseWorker
from gpufleet.errors import DeviceError, GpufleetError, WorkerError
from gpufleet.models.base import apply_pool_settings, setup_model
from gpufleet.models.resolve import model_factory

__all__ = ["ThreadWorker", "make_fleet", "weights_device"]

log = logging.getLogger(__name__)

_CLOSED = object()  # the prepare thread's last word: the batcher closed and is empty


def make_fleet(model: Any, config: PoolConfig, hooks: WorkerHooks) -> Fleet:
    """``backend="thread"``: ``workers_per_device`` thread workers per device, each with its own model copy."""
    devices = select(config.devices, cpu_devices=config.cpu_devices)
    make_model = model_factory(model)
    workers: list[Any] = []
    for _ in range(config.workers_per_device):
        for dev in devices:
            workers.append(ThreadWorker(index=len(workers), device=dev, config=config, hooks=hooks,
                                        make_model=make_model))
    return Fleet(devices, workers)


def weights_device(model: Any) -> str | None:
    """Where ``model`` keeps its weights: the device of the first parameter of its torch module (a
    ``TorchModel``'s ``module``, else the first ``nn.Module`` attribute), e.g. ``"cuda:1"``; None when it
    has none. Plain tensor attributes are not looked at: small CPU-side tables are legitimate."""
    torch = sys.modules.get("torch")  # not imported: the model holds no torch module (and needs no 2 s import)
    if torch is None:
        return None
    seen: list[Any] = [getattr(model, "module", None), *vars(model).values()] if hasattr(model, "__dict__") else []
    for value in seen:
        if isinstance(value, torch.nn.Module):
            for p in value.parameters():
                return str(p.device)
    return None


class ThreadWorker(BaseWorker):
    """Serves batches for one device on one thread. Created by :func:`make_fleet`, driven by the pool."""

    backend = "thread"

    def __init__(self, *, index: int, device: Device, config: PoolConfig, hooks: WorkerHooks,
                 make_model: Callable[[], Any]) -> None:
        super().__init__(index=index, device=device, config=config, hooks=hooks)
        self._healthy = False
        self.probe_pending = config.max_batch_size == 0
        self._model: Any = None
        self.step: BatchStep | None = None
        self.batch_probe: ProbeResult | None = None  # max_batch_size=0: what the probe chose
        self.weights_on: str | None = None  # reported after setup: the device of the model's weights
        self.context_on: str | None = None  # and the CUDA device current in the worker's thread
        self._make_model = make_model
        self._inflight: deque[tuple[list[Request], list, Any, float, float]] = deque()
        self._thread = threading.Thread(target=self._main, name=f"gpufleet-{self.name}", daemon=True)
        # Models with prepare_batch: (requests, prepared items) from the prepare thread, or an exception, or
        # _CLOSED; ``_stopping`` tells that thread the loop is gone.
        self._ahead: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._room = threading.Condition()  # notified when a launched batch finishes (the prepare thread paces)
        self._prep_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ahead_closed = False
        self._held: Any = None  # eager preparing: a chunk taken from ``_ahead`` that did not fit the last batch

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def model(self) -> Any:
        return self._model

    def placement(self) -> dict[str, Any]:
        return {"weights_on": self.weights_on, "context_on": self.context_on}

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if self._prep_thread is not None:
            self._prep_thread.join(timeout)

    def _setup(self) -> None:
        model = self._make_model()
        # Probed: the model is prepared (e.g. CUDA graphs captured) for every size the probe may choose.
        apply_pool_settings(model, batch_buckets=self.config.batch_buckets,
                            max_batch_size=self.max_batch or self.config.max_probe_batch)
        if self.device.is_cuda:
            with CUDA_SETUP_LOCK:  # one CUDA set-up (and graph capture) at a time in this process
                setup_model(model, self.device)
        else:
            setup_model(model, self.device)
        self._model = model
        self.weights_on = weights_device(model)
        if self.device.is_cuda:
            import torch

            self.context_on = f"cuda:{torch.cuda.current_device()}"
        want, where = self.device.torch, self.weights_on
        if where is not None and where != want and not (want == "cpu" and where.startswith("cpu")):
            # The classic "every copy silently landed on cuda:0": refuse the pool.
            raise DeviceError(f"{self.name} is meant for {want} but its model weights are on {where}: load them "
                              "on device.torch in setup(device) (e.g. module.to(device.torch))")
        self.step = BatchStep(model, self.device, self.name)
        self.preprocess = self.step.pre  # the pool runs it before items reach the batcher

    def _main(self) -> None:
        try:
            self._setup()
            if self.probe_pending:  # before the pool is ready: no caller's clock runs yet
                self._probe(None)
            self._healthy = True
        except BaseException as exc:  # noqa: BLE001 - reported to the pool, which decides
            self.error = exc
            log.error("%s failed in setup: %s", self.name, exc)
            self.ready.set()
            return
        self.ready.set()
        if self.max_batch == 0:
            self.max_batch = 1  # until the probe has run on the first real item
        if self.step is not None and self.step.prepared:
            if self.step.eager:  # chunks wait, prepared, for the loop: as many as the requests in flight
                self._ahead = queue.Queue()
            self._prep_thread = threading.Thread(target=self._prepare_ahead, name=f"gpufleet-{self.name}-prep",
                                                 daemon=True)
            self._prep_thread.start()
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - a bug in the loop must not hang callers
            log.exception("%s stopped unexpectedly", self.name)
            self.error, self._healthy = exc, False
            self.hooks.state()  # the pool stops routing here
            err = WorkerError(f"{self.name} stopped: {exc}")
            self._stopping.set()
            waiting = [r for batch, *_ in self._inflight for r in batch] + self._drain_ahead()
            self.fail(waiting + self.batcher.drain(), err, exc)
            while (batch := self.batcher.take(1 << 30)) is not None:  # routed here before the routes changed
                self.fail(batch, err, exc)
        finally:
            self._stopping.set()

    # -- the serving loop ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        step = self.step
        assert step is not None
        inflight = self._inflight  # batches launched on the device, not yet collected
        depth = self.config.pipeline_depth if step.pipelined else 1
        self.stats.idle_s = 0.0
        while True:
            if inflight:
                # The device is busy: take only what is ready now, else finish the oldest batch.
                got = self._next(block=False) if len(inflight) < depth else None
                if got is None:
                    self._finish(*inflight[0])
                    inflight.popleft()  # only once finished: a crash in between still sees its items
                    if self._prep_thread is not None:
                        with self._room:
                            self._room.notify()
                    continue
            else:
                self.stats.wait_begins()
                got = self._next(block=True)
                self.stats.wait_ends()
                if got is None:
                    return
            batch, items = got
            if not batch:
                continue
            t0 = time.monotonic()
            if step.pipelined:
                reporting_to(partial(self.progress, batch))
                try:
                    handle = step.launch(items)
                except GpufleetError as err:
                    self.fail(batch, err)
                    continue
                finally:
                    reporting_to(None)
                if handle is not None:
                    inflight.append((batch, items, handle, t0, time.monotonic() - t0))
                    continue
            self._finish(batch, items, None, t0, 0.0)  # ``predict`` (or a launch that ran out of memory) now

    def _next(self, *, block: bool) -> tuple[list[Request], list] | None:
        """The next batch to launch and its items (prepared, for models with ``prepare_batch``; the batch may be
        empty when all its items were cancelled or late); ``None`` once the batcher closed (``block``) or when
        nothing is ready (not ``block``)."""
        if self._prep_thread is not None:
            if self._ahead_closed:
                return None
            got, self._held = self._held, None
            try:
                if got is None:
                    got = self._ahead.get(block=block)
            except queue.Empty:
                return None
            if got is _CLOSED:
                self._ahead_closed = True
                return None
            if isinstance(got, BaseException):
                raise got
            return self._join_ahead(got) if self.step is not None and self.step.eager else got
        batch = self.batcher.take(self.max_batch, block=block)
        if batch is None or (not batch and not block):
            return None
        batch = self.admit(batch)
        if batch and self.probe_pending:
            self._probe(batch[0].item)
        return batch, [r.item for r in batch]

    def _join_ahead(self, got: tuple[list[Request], list]) -> tuple[list[Request], list]:
        """Eager preparing: ``got`` joined with the chunks prepared since, up to the batch size; the first that
        does not fit (or the thread's end or error) is held for the next call."""
        batch, items = got
        while len(batch) < self.max_batch:
            try:
                more = self._ahead.get_nowait()
            except queue.Empty:
                break
            if not isinstance(more, tuple) or len(batch) + len(more[0]) > self.max_batch:
                self._held = more
                break
            batch, items = batch + more[0], list(items) + list(more[1])
        return batch, items

    def _prepare_ahead(self) -> None:
        """The prepare thread: take batches from the batcher, prepare each one (``prepare_batch``) while the loop
        serves the previous one, and hand them on; an unexpected error is handed on for the loop to raise."""
        step = self.step
        assert step is not None
        batch: list[Request] = []
        depth = self.config.pipeline_depth if step.pipelined else 1
        eager = step.eager
        try:
            while True:
                if eager:  # whatever is queued, as soon as one item is
                    self.batcher.wait_full(1, self._stopping.is_set, 0.1)
                    taken = self.batcher.take(self.max_batch, block=False)
                    if not taken:
                        if self._stopping.is_set() or (self.batcher.closed and not len(self.batcher)):
                            break
                        continue
                else:
                    # Take the next batch only when the device has room for it (fewer than ``depth`` batches
                    # launched or prepared): meanwhile requests gather in the batcher and the batches stay full.
                    with self._room:
                        while len(self._inflight) + self._ahead.qsize() >= depth and not self._stopping.is_set():
                            self._room.wait(0.05)
                    taken = self.batcher.take(self.max_batch)
                if taken is None:
                    break
                batch = self.admit(taken)
                if not batch:
                    continue
                if self.probe_pending:
                    self._probe(batch[0].item)
                items = step.prepare([r.item for r in batch])
                if not self._hand((batch, items)):
                    self.fail(batch, WorkerError(f"{self.name} stopped"))
                    return
                batch = []
        except BaseException as exc:  # noqa: BLE001 - the loop raises it and fails what is left
            self.fail(batch, WorkerError(f"{self.name}: prepare failed: {exc}"), exc)
            self._hand(exc)
            return
        self._hand(_CLOSED)

    def _hand(self, entry: Any) -> bool:
        """Put ``entry`` on the queue ahead of the loop; False once the loop has stopped."""
        while not self._stopping.is_set():
            try:
                self._ahead.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _drain_ahead(self) -> list[Request]:
        """The requests of the prepared batches nobody will launch (the loop stopped)."""
        held, self._held = self._held, None
        out: list[Request] = list(held[0]) if isinstance(held, tuple) else []
        while True:
            try:
                got = self._ahead.get_nowait()
            except queue.Empty:
                return out
            if isinstance(got, tuple):
                out.extend(got[0])

    def _finish(self, batch: list[Request], items: list, handle: Any, t0: float, launch_s: float) -> None:
        step = self.step
        assert step is not None
        step.oom_batch = step.isolated = 0
        collect_from = time.monotonic()
        reporting_to(partial(self.progress, batch))
        try:
            outputs, errors = step.finish(items, handle)
        except GpufleetError as err:
            self.fail(batch, err)
            self.stats.progress = None
            return
        finally:
            reporting_to(None)
            if step.oom_batch:
                self.lower_max_batch(step.oom_batch, log)
        t1 = time.monotonic()
        timings = {"predict": t1 - t0, **step.model_timings()}
        if handle is not None:  # launched ahead: how long the launch took, and the wait for its results
            timings["launch"], timings["collect"] = launch_s, t1 - collect_from
        self.record_batch(len(batch), timings, step.media_seconds(outputs, errors), step.isolated)
        if step.post is None:
            self._answer(batch, outputs, errors)
        else:
            self.hooks.executor.submit(self._post, batch, outputs, errors)

    def _post(self, batch: list[Request], outputs: list, errors: dict[int, GpufleetError]) -> None:
        step = self.step
        assert step is not None
        t0 = time.monotonic()
        step.postprocess(outputs, errors)
        with self.stats.lock:
            self.stats.stage("postprocess").add((time.monotonic() - t0) / max(1, len(batch)))
        self._answer(batch, outputs, errors)

    def _answer(self, batch: list[Request], outputs: list, errors: dict[int, GpufleetError]) -> None:
        for i, err in errors.items():
            self.fail([batch[i]], err)
        pairs = zip(batch, outputs) if not errors else [
            (r, v) for i, (r, v) in enumerate(zip(batch, outputs)) if i not in errors]
        self.resolve(pairs, time.monotonic())

    # -- batch size probe ---------------------------------------------------------------------------------
    def _probe(self, sample: Any) -> None:
        """``max_batch_size=0``: probe the batch size (:mod:`gpufleet.engine.probe`) on the model's example
        input (``sample=None``, at setup) or on the first real item; without an example it waits for one."""
        step = self.step
        assert step is not None
        cap = self.config.max_probe_batch
        try:
            result = probe_worker_model(self._model, self.device, cap=cap, name=self.name, sample=sample,
                                        depth=self.config.pipeline_depth if step.pipelined else 1)
        except Exception as exc:  # noqa: BLE001 - not even size 1 ran: serve at the fixed default
            fallback = min(FIXED_SIZES[0], cap)
            log.warning("%s: batch size probe failed (%s: %s); serving at %d", self.name, type(exc).__name__, exc,
                        fallback)
            self.probe_pending, self.max_batch = False, fallback
            return
        if result is None:
            return  # no example input: probed on the first item
        self.probe_pending = False
        self.batch_probe = result
        self.max_batch = result.size

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.batch_probe is not None:
            out["batch_probe"] = self.batch_probe.describe()
        return out
