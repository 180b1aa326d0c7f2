"""A thread worker: one model instance pinned to one device, fed by its own batcher.

The loop keeps up to ``pipeline_depth`` batches in flight for models that split ``predict`` into
``launch(batch)`` (enqueue the device work, return a handle) and ``collect(handle) -> list``, so the next
batch is assembled and copied while the device computes the previous one. Other models run ``predict``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from gpufleet.devices.device import Device
from gpufleet.devices.locks import CUDA_SETUP_LOCK
from gpufleet.engine.batcher import Batcher
from gpufleet.engine.oom import empty_cache, is_oom
from gpufleet.engine.placement import weights_device
from gpufleet.engine.request import Request, fail_items, resolve_items
from gpufleet.engine.stats import WorkerStats
from gpufleet.errors import DeadlineExceeded, GpufleetError, WorkerError
from gpufleet.models.base import apply_pool_settings, optional_stage

__all__ = ["ThreadWorker"]

log = logging.getLogger(__name__)

_EWMA = 0.2  # weight of the newest batch in the per-item time estimate used by the speed balancer


class ThreadWorker:
    """Serves batches for one device on one thread. Created and driven by :class:`gpufleet.Pool`."""

    def __init__(
        self,
        *,
        index: int,
        device: Device,
        make_model: Callable[[], Any],
        max_batch_size: int,
        max_wait_ms: float,
        max_probe_batch: int,
        pipeline_depth: int,
        batch_buckets: tuple[int, ...] | None = None,
        executor: Executor,
        on_done: Callable[[ThreadWorker, int], None],
        on_state: Callable[[], None] | None = None,
    ) -> None:
        self.index = index
        self.device = device
        self.name = f"worker-{index}@{device.label}"
        self.batcher = Batcher(max_wait_ms / 1000.0)
        self.stats = WorkerStats()
        self.outstanding = 0  # items routed here and not yet answered; guarded by the pool's lock
        self.item_time = 0.0
        self.healthy = False
        self.enabled = True
        self.error: BaseException | None = None
        self.max_batch = max_batch_size
        self.probe_pending = max_batch_size == 0
        self.max_probe_batch = max_probe_batch
        self.pipeline_depth = pipeline_depth
        self.batch_buckets = batch_buckets
        self.model: Any = None
        self.weights_on: str | None = None  # reported after setup: the device of the model's weights
        self.context_on: str | None = None  # and the CUDA device current in the worker's thread
        self.preprocess: Callable[[Any], Any] | None = None
        self.postprocess: Callable[[Any], Any] | None = None
        self.ready = threading.Event()
        self._make_model = make_model
        self._executor = executor
        self._on_done = on_done
        self._on_state = on_state
        self._oom_logged = False
        self._inflight: deque[tuple[list[Request], Any, float]] = deque()
        self._thread = threading.Thread(target=self._main, name=f"gpufleet-{self.name}", daemon=True)

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _main(self) -> None:
        try:
            model = self._make_model()
            apply_pool_settings(model, batch_buckets=self.batch_buckets, max_batch_size=self.max_batch)
            if self.device.is_cuda:
                with CUDA_SETUP_LOCK:  # one CUDA set-up (and graph capture) at a time in this process
                    model.setup(self.device)
            else:
                model.setup(self.device)
            self.model = model
            self.weights_on = weights_device(model)
            if self.device.is_cuda:
                import torch

                self.context_on = f"cuda:{torch.cuda.current_device()}"
            self.preprocess = optional_stage(model, "preprocess")
            self.postprocess = optional_stage(model, "postprocess")
            self._pipelined = callable(getattr(model, "launch", None)) and callable(getattr(model, "collect", None))
            self.healthy = True
        except BaseException as exc:  # noqa: BLE001 - reported to the pool, which decides
            self.error = exc
            log.error("%s failed in setup: %s", self.name, exc)
            self.ready.set()
            return
        self.ready.set()
        if self.max_batch == 0:
            self.max_batch = 1  # until the probe has run on the first real item
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - a bug in the loop must not hang callers
            log.exception("%s stopped unexpectedly", self.name)
            self.error, self.healthy = exc, False
            if self._on_state is not None:
                self._on_state()  # the pool stops routing here
            err = WorkerError(f"{self.name} stopped: {exc}")
            self._fail([r for batch, _, _ in self._inflight for r in batch] + self.batcher.drain(), err, exc)
            while (batch := self.batcher.take(1 << 30)) is not None:  # routed here before the routes changed
                self._fail(batch, err, exc)

    # -- the serving loop ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        inflight = self._inflight  # batches launched on the device, not yet collected
        depth = self.pipeline_depth if self._pipelined else 1
        while True:
            if inflight:
                # The device is busy: take only what is queued now, else finish the oldest batch.
                batch = self.batcher.take(self.max_batch, block=False) if len(inflight) < depth else []
                if not batch:
                    self._finish(*inflight[0])
                    inflight.popleft()  # only once finished: a crash in between still sees its items
                    continue
            else:
                batch = self.batcher.take(self.max_batch)
                if batch is None:
                    return
            batch = self._admit(batch)
            if not batch:
                continue
            if self.probe_pending:
                self._probe(batch[0].item)
            t0 = time.monotonic()
            if self._pipelined:
                try:
                    handle = self.model.launch([r.item for r in batch])
                except Exception as exc:  # noqa: BLE001
                    self._recover(batch, exc, t0)
                    continue
                inflight.append((batch, handle, t0))
            else:
                self._run_sync(batch, t0)
        # unreachable

    def _admit(self, batch: list[Request]) -> list[Request]:
        """Drop cancelled items and fail expired ones; the rest are marked running."""
        now = time.monotonic()
        keep: list[Request] = []
        dropped = 0
        qwait = self.stats.stage("queue_wait")
        for r in batch:
            if not r.future.set_running_or_notify_cancel():
                continue  # cancelled by the caller (e.g. the HTTP client went away): its slot is already free
            if r.deadline is not None and now > r.deadline:
                r.future.set_exception(DeadlineExceeded(f"deadline passed after {now - r.t_submit:.3f}s in queue"))
                dropped += 1
            else:
                keep.append(r)
                qwait.add(now - r.t_enqueue)
        if dropped:
            self._on_done(self, dropped)
        return keep

    def _finish(self, batch: list[Request], handle: Any, t0: float) -> None:
        try:
            outputs = self.model.collect(handle)
        except Exception as exc:  # noqa: BLE001
            self._recover(batch, exc, t0)
            return
        self._deliver(batch, outputs, t0)

    def _run_sync(self, batch: list[Request], t0: float) -> None:
        try:
            outputs = self.model.predict([r.item for r in batch])
        except Exception as exc:  # noqa: BLE001
            self._recover(batch, exc, t0)
            return
        self._deliver(batch, outputs, t0)

    def _recover(self, batch: list[Request], exc: Exception, t0: float) -> None:
        """Out of memory: free the cache and serve the batch in halves; any other error fails the batch."""
        if not is_oom(exc):
            # The model's own GpufleetErrors (e.g. InputError for mismatched shapes) reach the caller as they are.
            err = exc if isinstance(exc, GpufleetError) else WorkerError(
                f"{self.name}: predict failed: {type(exc).__name__}: {exc}")
            self._fail(batch, err, exc)
            return
        with self.stats.lock:
            self.stats.oom_events += 1
        empty_cache(self.device)
        if len(batch) == 1:
            self._fail(batch, WorkerError(f"{self.name}: out of memory on a single item: {exc}"), exc)
            return
        half = max(1, len(batch) // 2)
        if half < self.max_batch:
            if not self._oom_logged:
                log.warning("%s: out of memory at batch %d; max batch lowered to %d", self.name, len(batch), half)
                self._oom_logged = True
            self.max_batch = half
        for part in (batch[:half], batch[half:]):
            self._run_sync(part, time.monotonic())

    def _deliver(self, batch: list[Request], outputs: Any, t0: float) -> None:
        t1 = time.monotonic()
        if not isinstance(outputs, (list, tuple)) or len(outputs) != len(batch):
            got = f"{len(outputs)} outputs" if isinstance(outputs, (list, tuple)) else type(outputs).__name__
            self._fail(batch, WorkerError(f"{self.name}: predict returned {got} for {len(batch)} items (must be a "
                                          "list of the same length)"), None)
            return
        n = len(batch)
        self.stats.record_batch(n, t1 - t0)
        self.stats.stage("predict").add(t1 - t0)
        for name, seconds in getattr(self.model, "last_timings", {}).items():
            self.stats.stage(name).add(seconds)
        seconds_of = getattr(self.model, "output_seconds", None)
        if seconds_of is not None:  # audio/video models: real-time factor = compute time / media produced
            media = sum(float(seconds_of(o)) for o in outputs)
            with self.stats.lock:
                self.stats.media_s += media
        per_item = (t1 - t0) / n
        self.item_time = per_item if not self.item_time else (1 - _EWMA) * self.item_time + _EWMA * per_item
        if self.postprocess is None:
            self._resolve(batch, outputs)
        else:
            self._executor.submit(self._post, batch, outputs)

    def _post(self, batch: list[Request], outputs: list) -> None:
        t0 = time.monotonic()
        results: list[Any] = []
        errors: dict[int, BaseException] = {}
        post = self.postprocess
        for i, out in enumerate(outputs):
            try:
                results.append(post(out))
            except Exception as exc:  # noqa: BLE001 - one bad output fails only its item
                results.append(None)
                errors[i] = exc
        with self.stats.lock:
            self.stats.stage("postprocess").add((time.monotonic() - t0) / max(1, len(batch)))
        if errors:
            ok = [(r, v) for i, (r, v) in enumerate(zip(batch, results)) if i not in errors]
            for i, exc in errors.items():
                err = exc if isinstance(exc, GpufleetError) else WorkerError(f"{self.name}: postprocess failed: {exc}")
                self._fail([batch[i]], err, exc)
            if ok:
                self._resolve([r for r, _ in ok], [v for _, v in ok])
            return
        self._resolve(batch, results)

    def _resolve(self, batch: list[Request], results: list) -> None:
        resolve_items(self, zip(batch, results, strict=True), time.monotonic())

    def _fail(self, batch: list[Request], err: GpufleetError, cause: BaseException | None = None) -> None:
        fail_items(self, batch, err, cause)

    # -- batch size probe ---------------------------------------------------------------------------------
    def _probe(self, sample: Any) -> None:
        """Find the largest batch that fits and still raises throughput (``max_batch_size=0``)."""
        self.probe_pending = False
        best_bs, best_rate, bs = 1, 0.0, 1
        while bs <= self.max_probe_batch:
            try:
                self.model.predict([sample] * bs)  # warm-up at this size
                t0 = time.perf_counter()
                for _ in range(2):
                    self.model.predict([sample] * bs)
                rate = 2 * bs / max(time.perf_counter() - t0, 1e-9)
            except Exception as exc:  # noqa: BLE001
                if is_oom(exc):
                    empty_cache(self.device)
                    break
                log.warning("%s: batch size probe stopped at %d: %s", self.name, bs, exc)
                break
            if rate < best_rate * 1.05:
                break
            best_bs, best_rate = bs, rate
            bs *= 2
        self.max_batch = best_bs
        log.info("%s: probed max batch size %d (%.0f items/s)", self.name, best_bs, best_rate)

    def fail_pending(self, err: GpufleetError) -> None:
        self._fail(self.batcher.drain(), err, None)

    def describe(self) -> dict:
        return {
            "worker": self.index,
            "device": self.device.label,
            "healthy": self.healthy,
            "enabled": self.enabled,
            "max_batch_size": self.max_batch,
            "current_queue_depth": len(self.batcher),
            "outstanding": self.outstanding,
            "item_time_ms": round(self.item_time * 1e3, 4),
            "weights_on": self.weights_on,
            "context_on": self.context_on,
            "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}",
        }

