"""``Pool``: one model copy per worker on every device, behind one submit/map/infer front."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from queue import SimpleQueue
from typing import Any

from gpufleet.config import PoolConfig, with_options
from gpufleet.devices import Device
from gpufleet.engine.backend import Worker, WorkerHooks, make_fleet
from gpufleet.engine.balancer import make_balancer
from gpufleet.engine.placing import PreprocessPlacement
from gpufleet.engine.report import health_report, stats_report
from gpufleet.engine.request import ItemFuture, Request
from gpufleet.engine.step import preprocess_error
from gpufleet.errors import (
    ConfigError,
    DeviceError,
    PoolClosed,
    QueueFullError,
    WorkerDied,
    WorkerError,
)

__all__ = ["Pool"]

log = logging.getLogger(__name__)


class Pool:
    """Serve one model on every selected device: a worker per device (or several), each with its own
    model copy and dynamic batcher, behind a balancer.

    >>> with Pool(lambda batch: [x * 2 for x in batch], cpu_devices=2) as pool:
    ...     list(pool.map(range(5)))
    [0, 2, 4, 6, 8]

    ``model`` is a model class, a model instance (copied per worker), a function ``f(batch) -> list`` or an
    embedded model name. Other arguments are the fields of :class:`gpufleet.config.PoolConfig`.
    """

    def __init__(self, model: Any, devices: str | Sequence[int] | None = None, *, config: PoolConfig | None = None,
                 **options: Any) -> None:
        if devices is not None:
            options["devices"] = devices
        self.config = cfg = with_options(config or PoolConfig(), options, "gpufleet.PoolConfig")
        # the workers' CUDA graphs and buffers are made for this size: configure() may lower it, not raise it
        self._setup_max_batch = cfg.max_batch_size or cfg.max_probe_batch
        self._balancer = make_balancer(cfg.balancer)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._outstanding = 0
        self._closing = False
        self._closed = False
        self._started = time.monotonic()
        self._placing = PreprocessPlacement()
        threads = cfg.preprocess_threads or max(2, min(32, (os.cpu_count() or 2)))
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="gpufleet-cpu")
        hooks = WorkerHooks(done=self._done, state=self._on_worker_state, requeue=self._requeue,
                            executor=self._executor)
        try:
            fleet = make_fleet(model, cfg, hooks)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self.devices: list[Device] = fleet.devices
        self.workers: list[Worker] = fleet.workers
        self.mps = fleet.mps
        self._grow = fleet.grow
        self._start()

    # -- start-up -----------------------------------------------------------------------------------------
    def _start(self) -> None:
        for w in self.workers:  # set-up runs in parallel, one thread per worker
            w.start()
        for w in self.workers:
            w.ready.wait()
        failed = [w for w in self.workers if w.error is not None]
        if failed and (len(failed) == len(self.workers) or not self.config.allow_degraded):
            first = failed[0]
            self._shutdown_workers()
            if isinstance(first.error, DeviceError):  # a copy not on its own device: the pool refuses to start
                raise first.error
            raise WorkerError(f"{first.name} failed in setup: {type(first.error).__name__}: {first.error}") \
                from first.error
        if failed:
            log.warning("pool started degraded: %d of %d workers failed in setup", len(failed), len(self.workers))
        self._refresh_routes()
        if self.config.gc_freeze:
            # Measured (CPU, torch imported): 43k -> 94-138k items/s through map; see PoolConfig.gc_freeze.
            # Collect first, so only live objects are frozen (frozen garbage would never be freed).
            gc.collect()
            gc.freeze()
        log.info("pool ready: %d worker(s) on %s", len(self._routes), ", ".join(d.label for d in self.devices))
        for w in self.workers:  # the placement proof: where each copy's weights and CUDA context really are
            where = {k: v for k, v in w.placement().items() if v is not None}
            log.info("%s placement: %s", w.name, " ".join(f"{k}={v}" for k, v in where.items()) or "n/a")

    def _refresh_routes(self) -> None:
        # ``healthy`` of a process worker is False while its process restarts or its circuit breaker is open.
        self._routes = [] if self._closing else [w for w in self.workers if w.healthy and w.enabled]
        self._routes_on: dict[str, list[Worker]] = {}  # device label -> its routable workers (``device=`` hint)
        for w in self._routes:
            self._routes_on.setdefault(w.device.label, []).append(w)

    def _on_worker_state(self) -> None:
        """A worker went down, came back, or its breaker changed state."""
        with self._lock:
            self._refresh_routes()

    def _requeue(self, src: Worker, reqs: list[Request]) -> list[Request]:
        """Move ``src``'s items to other healthy workers (after a crash); returns the items
        nobody else can take. Outstanding counts move with them; a cancelled item's slot stays released."""
        placed: list[tuple[Any, Request]] = []
        left: list[Request] = []
        with self._lock:
            targets = [w for w in self.workers if w is not src and w.healthy and w.enabled]
            for r in reqs:
                if r.future.cancelled():
                    continue  # its cancel hook released the slot of r.worker already
                if not targets:
                    left.append(r)
                    continue
                w = self._balancer.pick(targets)
                src.outstanding -= 1
                w.outstanding += 1
                r.worker = w
                placed.append((w, r))
        for w, r in placed:
            if w.batcher.closed:
                w.fail([r], PoolClosed("the pool closed before the item was served"))
            else:
                w.batcher.put(r)
        return left

    def _release(self, req: Request) -> None:
        """A cancelled item frees its slot on the worker that holds it now (it may have been requeued); read
        under the lock that ``_requeue`` moves it under."""
        with self._lock:
            req.worker.outstanding -= 1
            self._outstanding -= 1
            if self._outstanding <= 0 and self._closing:
                self._idle.notify_all()

    # -- submitting ---------------------------------------------------------------------------------------
    def submit(self, item: Any, *, timeout_s: float | None = None,
               progress: Callable[[Any], None] | None = None, device: str | None = None,
               preprocessed: bool = False) -> Future:
        """Queue one item; the future resolves to its result or raises a :class:`GpufleetError`.

        ``device`` (a label such as ``"cuda:1"``) prefers that device's workers, e.g. for a frame already
        decoded into its memory; other devices serve it only when that one has no healthy worker.
        ``preprocessed=True`` says the model's ``preprocess`` already ran on ``item`` (an HTTP front end did);
        the worker then skips it (a process worker's child too).

        ``progress`` is called, on a pool thread, with each value the model passes to
        :func:`gpufleet.report_progress` while it serves the item (thread and process workers).

        Raises ``QueueFullError`` at once when ``max_queue`` items are outstanding, ``PoolClosed`` after
        ``close()``.
        """
        if self._closing:
            raise PoolClosed("the pool is closing and takes no new work")
        fut = ItemFuture()
        if progress is not None:
            fut.progress = progress  # type: ignore[attr-defined]
        now = time.monotonic()
        t = timeout_s if timeout_s is not None else self.config.timeout_s
        req = Request(item, fut, now, now + t if t else None, preprocessed)
        with self._lock:
            if self._closing:  # close() may have begun since the check above; its routes are gone
                raise PoolClosed("the pool is closing and takes no new work")
            if self._outstanding >= self.config.max_queue:
                err = QueueFullError(f"queue full: {self._outstanding} items outstanding (max_queue="
                                     f"{self.config.max_queue})")
                err.retry_after_s = self._drain_time()
                raise err
            routes = self._routes_on.get(device) or self._routes if device is not None else self._routes
            if routes:
                w = self._balancer.pick(routes)
            else:  # every worker is down: hold the item for one that restarts (its deadline still applies)
                back = self._returning(device)
                if back is None:
                    raise WorkerDied("no worker can serve the item: none is healthy and none is restarting")
                w = back
            w.outstanding += 1
            self._outstanding += 1
            req.worker = w
        fut._on_cancel = lambda: self._release(req)  # a cancelled item frees its slot now; workers skip it
        if w.preprocess is None or preprocessed:
            w.batcher.put(req)
        elif self._placing.inline:  # cheaper than a hand-off to a pool thread
            self._preprocess(w, req)
        else:
            self._executor.submit(self._preprocess, w, req)
        return fut

    def _returning(self, device: str | None) -> Worker | None:
        """The restarting worker expected back first (on ``device`` if it has one); None when none is."""
        back = [(b, w.outstanding, w) for w in self.workers if w.enabled and w.returning
                and (b := w.back_in_s()) is not None]
        if device is not None:
            back = [x for x in back if x[2].device.label == device] or back
        return min(back, key=lambda x: x[:2])[2] if back else None

    def _drain_time(self) -> float:
        """Seconds until the queue has room again, from measured per-item times (and restarts under way)."""
        live = [w for w in self.workers if w.enabled and (w.healthy or w.returning)]
        if not live:
            return 1.0
        rate = sum(1.0 / w.item_time for w in live if w.item_time > 0)  # items/s of the live workers
        wait = min((w.back_in_s() or 0.0) for w in live)
        return min(60.0, max(0.1, wait + (self._outstanding / rate if rate else 1.0)))

    def _preprocess(self, w: Worker, req: Request) -> None:
        if req.future.cancelled():
            return  # its slot was freed when it was cancelled
        try:
            req.item = self._placing.run(w.preprocess, req.item)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - a bad item fails alone
            w.fail([req], preprocess_error(exc), exc)
            return
        if w.batcher.closed:
            w.fail([req], PoolClosed("the pool closed before the item was served"))
            return
        w.batcher.put(req)

    def _done(self, w: Worker, n: int) -> None:
        with self._lock:
            w.outstanding -= n
            self._outstanding -= n
            if self._outstanding <= 0 and self._closing:
                self._idle.notify_all()

    async def infer(self, item: Any, *, timeout_s: float | None = None) -> Any:
        """Await one item's result; cancelling the awaiting task cancels the item if not yet running."""
        return await asyncio.wrap_future(self.submit(item, timeout_s=timeout_s))

    def __call__(self, item: Any) -> Any:
        return self.submit(item).result()

    def map(self, items: Iterable[Any], *, ordered: bool = True, max_in_flight: int | None = None,
            return_exceptions: bool = False, timeout_s: float | None = None,
            device: str | None = None) -> Iterator[Any]:
        """Stream results for ``items``: in input order (``ordered=True``) or as they finish; ``device``
        prefers one device's workers (see :meth:`submit`).

        At most ``max_in_flight`` items are queued at once (default: eight full batches per worker), so
        an endless iterator is consumed lazily; lower it to bound memory when items are large. An item's
        error is raised when its turn comes, or yielded as the exception object with ``return_exceptions=True``.
        """
        if max_in_flight is None:
            per_worker = self.config.max_batch_size or self.config.max_probe_batch
            # Eight: results come back in batches, and the oldest item must be answered before more go in;
            # with four, two process workers on 2x H200 (the pool overhead run) served 26.6k items/s, with eight 27.0k.
            max_in_flight = max(8, 8 * per_worker * max(1, len(self.workers)))
        limit = max(1, min(max_in_flight, self.config.max_queue))
        if ordered:
            return self._map_ordered(items, limit, return_exceptions, timeout_s, device)
        return self._map_unordered(items, limit, return_exceptions, timeout_s, device)

    def _submit_waiting(self, item: Any, timeout_s: float | None, oldest: Future | None,
                        device: str | None) -> Future:
        """Submit; when other producers filled the queue, wait for our oldest item (or a moment) and retry."""
        while True:
            try:
                return self.submit(item, timeout_s=timeout_s, device=device)
            except QueueFullError:
                if oldest is not None and not oldest.done():
                    try:
                        oldest.exception(timeout=0.05)
                    except Exception:  # noqa: BLE001 - only waiting
                        pass
                else:
                    time.sleep(0.001)

    @staticmethod
    def _value(fut: Future, return_exceptions: bool) -> Any:
        if return_exceptions:
            exc = fut.exception()
            return exc if exc is not None else fut.result()
        return fut.result()

    def _map_ordered(self, items: Iterable[Any], limit: int, return_exceptions: bool,
                     timeout_s: float | None, device: str | None) -> Iterator[Any]:
        pending: deque[Future] = deque()
        try:
            for x in items:
                pending.append(self._submit_waiting(x, timeout_s, pending[0] if pending else None, device))
                while len(pending) >= limit:
                    yield self._value(pending.popleft(), return_exceptions)
            while pending:
                yield self._value(pending.popleft(), return_exceptions)
        finally:
            for f in pending:  # the consumer stopped early: don't run what nobody will read
                f.cancel()

    def _map_unordered(self, items: Iterable[Any], limit: int, return_exceptions: bool,
                       timeout_s: float | None, device: str | None) -> Iterator[Any]:
        done: SimpleQueue[Future] = SimpleQueue()
        live: set[Future] = set()
        try:
            for x in items:
                f = self._submit_waiting(x, timeout_s, None, device)
                live.add(f)
                f.add_done_callback(done.put)
                while len(live) >= limit:
                    f = done.get()
                    live.discard(f)
                    yield self._value(f, return_exceptions)
            while live:
                f = done.get()
                live.discard(f)
                yield self._value(f, return_exceptions)
        finally:
            for f in live:
                f.cancel()

    # -- operations ---------------------------------------------------------------------------------------
    def rescale(self) -> list[int]:
        """Add workers for devices that appeared since the pool started (GPUs of Ray nodes that joined the
        cluster) and start routing to them once set up; the new workers' indices (empty when none appeared,
        or the backend's devices never change). Workers that fail to set up are kept out of the routes."""
        if self._grow is None or self._closing:
            return []
        devices, workers = self._grow(len(self.workers))
        for w in workers:
            w.start()
        for w in workers:
            w.ready.wait()
        with self._lock:
            self.devices = self.devices + devices
            self.workers = self.workers + workers
            self._refresh_routes()
        if workers:
            log.info("pool rescaled: %d new worker(s) on %s", len(workers), ", ".join(d.label for d in devices))
        return [w.index for w in workers]

    def set_enabled(self, device_label: str, enabled: bool) -> list[int]:
        """Stop (or resume) routing new items to a device's workers; queued items still finish."""
        hit = [w for w in self.workers if w.device.label == device_label or str(w.device.index) == device_label]
        if not hit:
            raise ConfigError(f"no worker on device {device_label!r}; devices: "
                              f"{', '.join(d.label for d in self.devices)}")
        with self._lock:
            for w in hit:
                w.enabled = enabled
            self._refresh_routes()
        return [w.index for w in hit]

    def configure(self, *, max_batch_size: int | None = None, max_wait_ms: float | None = None) -> dict[str, Any]:
        """Change how every worker batches, while serving: the next batches use them (``gpufleet tune`` measures
        several settings on one warm pool). ``max_batch_size`` may not exceed the size the workers were set up
        for (their CUDA graphs and buffers cover no more: raise it by creating the pool anew). Returns the
        settings in force."""
        limit = self._setup_max_batch
        if max_batch_size is not None and not 1 <= max_batch_size <= limit:
            raise ConfigError(f"max_batch_size must be within 1..{limit} (the size the workers were set up for; "
                              f"a larger one needs a new pool), got {max_batch_size}")
        if max_wait_ms is not None and not 0 <= max_wait_ms <= 60_000:
            raise ConfigError(f"max_wait_ms must be within 0..60000, got {max_wait_ms}")
        with self._lock:
            changes: dict[str, Any] = {}
            if max_batch_size is not None:
                changes["max_batch_size"] = max_batch_size
            if max_wait_ms is not None:
                changes["max_wait_ms"] = float(max_wait_ms)
            self.config = dataclasses.replace(self.config, **changes)
            for w in self.workers:
                if max_batch_size is not None:
                    w.max_batch = w.batcher.cap = max_batch_size
                if max_wait_ms is not None:
                    w.batcher.max_wait_s = max_wait_ms / 1000.0
                w.batcher.wake()
        log.info("batching now: max_batch_size=%d, max_wait_ms=%g", self.config.max_batch_size,
                 self.config.max_wait_ms)
        return {"max_batch_size": self.config.max_batch_size, "max_wait_ms": self.config.max_wait_ms,
                "max_batch_size_limit": limit}

    async def configure_async(self, *, max_batch_size: int | None = None,
                              max_wait_ms: float | None = None) -> dict[str, Any]:
        """:meth:`configure` from an event loop (see :meth:`stats_async`)."""
        return self.configure(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)

    @property
    def model(self) -> Any:
        """A set-up model instance (the first healthy worker's), for its metadata; the pool owns it, so don't
        call its ``predict``."""
        return next((w.model for w in self.workers if w.model is not None), None)

    @property
    def outstanding(self) -> int:
        return self._outstanding

    @property
    def ready(self) -> bool:
        """Taking work: a worker is healthy, or one restarts and is expected back within the default deadline
        (``timeout_s``; without one, while any restarts). Items submitted meanwhile wait for it."""
        if self._closing:
            return False
        if self._routes:
            return True
        limit = self.config.timeout_s
        for w in self.workers:
            if w.enabled and w.returning:
                back = w.back_in_s()
                if back is not None and (limit is None or back <= limit):
                    return True
        return False

    def health(self) -> dict:
        """Readiness and per-worker health in the seed's ``/health`` shape, with each worker's ``status``
        (up, restarting, down)."""
        return health_report(self.workers, ready=self.ready, draining=self._closing and not self._closed)

    def stats(self) -> dict:
        """Totals, throughput, per-GPU stats in the seed schema, per-worker stats and stage percentiles (ms)."""
        report = stats_report(self.workers, self.devices, balancer=self._balancer.name, backend=self.config.backend,
                              mps=self.mps, outstanding=self._outstanding, started=self._started,
                              preprocess_samples=self._placing.samples())
        return {**report, "max_batch_size": self.config.max_batch_size, "max_wait_ms": self.config.max_wait_ms}

    async def stats_async(self) -> dict:
        """:meth:`stats` from an event loop, off the loop (it may take milliseconds); a
        :class:`~gpufleet.engine.remote.RemotePool` answers the same."""
        return await asyncio.get_running_loop().run_in_executor(None, self.stats)

    async def health_async(self) -> dict:
        """:meth:`health` from an event loop (see :meth:`stats_async`)."""
        return self.health()

    async def set_enabled_async(self, device_label: str, enabled: bool) -> list[int]:
        """:meth:`set_enabled` from an event loop (see :meth:`stats_async`)."""
        return self.set_enabled(device_label, enabled)

    # -- shutdown -----------------------------------------------------------------------------------------
    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop admitting work; with ``drain`` wait (up to ``timeout`` s) until every queued item is served,
        then stop the workers. Items still queued after that fail with ``PoolClosed``.
        """
        with self._lock:
            if self._closed:
                return
            self._closing = True
            self._routes, self._routes_on = [], {}
            if drain:
                end = None if timeout is None else time.monotonic() + timeout
                while self._outstanding > 0:
                    remaining = None if end is None else end - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._idle.wait(remaining if remaining is not None else 0.5)
        self._shutdown_workers()
        self._closed = True

    def _shutdown_workers(self) -> None:
        for w in self.workers:
            w.fail_pending(PoolClosed("the pool closed before the item was served"))
            w.batcher.close()
        for w in self.workers:
            w.join(timeout=30)
        self._executor.shutdown(wait=True)
        for w in self.workers:  # anything a preprocess thread queued after the batchers closed
            w.fail_pending(PoolClosed("the pool closed before the item was served"))

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(drain=exc[0] is None)

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close, exc[0] is None)

    def __repr__(self) -> str:
        return (f"Pool(workers={len(self.workers)}, devices=[{', '.join(d.label for d in self.devices)}], "
                f"balancer={self._balancer.name!r}, max_batch_size={self.config.max_batch_size})")

