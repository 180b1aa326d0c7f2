"""What every worker shares, whatever runs its model: the batcher, counters, and answering items exactly once.

Backends subclass :class:`BaseWorker` and add how the model runs (:mod:`gpufleet.engine.thread`,
:mod:`gpufleet.engine.process`); the pool sees them through :class:`gpufleet.engine.backend.Worker`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import InvalidStateError
from typing import Any

from gpufleet.config import PoolConfig
from gpufleet.devices.device import Device
from gpufleet.engine import wire
from gpufleet.engine.backend import WorkerHooks
from gpufleet.engine.batcher import Batcher
from gpufleet.engine.breaker import CircuitBreaker
from gpufleet.engine.request import Request
from gpufleet.engine.stats import WorkerStats
from gpufleet.errors import DeadlineExceeded, GpufleetError, WorkerDied

__all__ = ["BaseWorker", "RestartingWorker"]

log = logging.getLogger(__name__)

_EWMA = 0.2  # weight of the newest batch in the per-item time estimate used by the speed balancer


def _call_progress(cb: Callable[[Any], None], value: Any) -> None:
    try:
        cb(value)
    except Exception:  # noqa: BLE001 - a user's callback must not break serving
        log.exception("progress callback failed")


class BaseWorker:
    """The bookkeeping half of a worker (see :class:`gpufleet.engine.backend.Worker`); subclasses run the model."""

    backend = ""

    def __init__(self, *, index: int, device: Device, config: PoolConfig, hooks: WorkerHooks) -> None:
        self.index = index
        self.device = device
        self.name = f"worker-{index}@{device.label}"
        self.config = config
        self.hooks = hooks
        self.batcher = Batcher(config.max_wait_ms / 1000.0)
        self.stats = WorkerStats()
        self.outstanding = 0
        self.item_time = 0.0
        self.enabled = True
        self.error: BaseException | None = None
        self.max_batch = config.max_batch_size
        self.preprocess: Callable[[Any], Any] | None = None
        self.ready = threading.Event()
        # One answer per item: a backend's threads (result reader, supervisor, deadline watch) may race to
        # finish the same items; whoever holds this lock first answers, the others see them done.
        self._answer_lock = threading.RLock()  # re-entrant: a done-callback may answer another item here
        self._oom_logged = False

    @property
    def healthy(self) -> bool:
        raise NotImplementedError

    @property
    def model(self) -> Any:
        return None

    def start(self) -> None:
        raise NotImplementedError

    def join(self, timeout: float | None = None) -> None:
        raise NotImplementedError

    # -- answering items ----------------------------------------------------------------------------------
    def resolve(self, pairs: Iterable[tuple[Request, Any]], now: float) -> None:
        """Deliver results: count them, record end-to-end latency, free their queue slots, then wake the
        callers. Items already finished (e.g. timed out) are skipped."""
        with self._answer_lock:
            live = [(r, v) for r, v in pairs if not r.future.done()]
            if not live:
                return
            stats = self.stats
            with stats.lock:
                stats.total_requests += len(live)
                e2e = stats.stage("e2e")
                for r, _ in live:
                    e2e.add(now - r.t_submit)
            self.hooks.done(self, len(live))
            for r, v in live:
                try:
                    r.future.set_result(v)
                except InvalidStateError:
                    pass  # cancelled in the meantime; nobody waits for this item

    def fail(self, reqs: Iterable[Request], err: GpufleetError, cause: BaseException | None = None) -> None:
        """Fail items with ``err`` (a copy per item, ``cause`` chained). Pending items are marked running first,
        atomically against ``cancel()``: a cancelled item already freed its slot."""
        if cause is None:
            cause = err.__cause__
        with self._answer_lock:
            live = [r for r in reqs
                    if not r.future.done() and (r.future.running() or r.future.set_running_or_notify_cancel())]
            if not live:
                return
            with self.stats.lock:
                self.stats.errors += len(live)
            self.hooks.done(self, len(live))
            for r in live:
                e = err if len(live) == 1 else type(err)(str(err))
                e.__cause__ = cause
                e.retry_after_s = err.retry_after_s
                try:
                    r.future.set_exception(e)
                except InvalidStateError:
                    pass

    def progress(self, reqs: list[Request], value: Any, index: int | None) -> None:
        """The model reported ``value`` for item ``index`` of the batch ``reqs`` (``None``: all of it): shown in
        the worker's stats until the batch is answered, and passed to the items' ``progress`` callbacks on a
        pool thread (a slow callback blocks nobody)."""
        self.stats.progress = value
        for r in reqs if index is None else reqs[index:index + 1]:
            cb = getattr(r.future, "progress", None)
            if cb is not None and not r.future.done():
                try:
                    self.hooks.executor.submit(_call_progress, cb, value)
                except RuntimeError:
                    return  # the pool is shutting down

    def fail_pending(self, err: GpufleetError) -> None:
        self.fail(self.batcher.drain(), err)

    def admit(self, batch: list[Request]) -> list[Request]:
        """The items of a batch that are still wanted, marked running: cancelled ones are dropped (their slot is
        already free), expired ones fail with ``DeadlineExceeded``."""
        now = time.monotonic()
        keep: list[Request] = []
        late: list[Request] = []
        qwait = self.stats.stage("queue_wait")
        for r in batch:
            if not r.future.running() and not r.future.set_running_or_notify_cancel():
                continue
            if r.deadline is not None and now > r.deadline:
                late.append(r)
            else:
                keep.append(r)
                qwait.add(now - r.t_enqueue)
        if late:
            self.fail(late, DeadlineExceeded(f"deadline passed after {now - late[0].t_submit:.3f}s in queue"))
        return keep

    # -- bookkeeping --------------------------------------------------------------------------------------
    def record_batch(self, n: int, timings: dict[str, float], media_s: float = 0.0, isolated: int = 0) -> None:
        """Count a served batch of ``n`` items: ``timings["predict"]`` is its device time (seconds), the other
        entries are stage times; ``media_s`` the seconds of media it produced; ``isolated`` the splits made to
        isolate items the model failed on."""
        busy = timings.get("predict", 0.0)
        self.stats.progress = None  # the batch it described is done
        self.stats.record_batch(n, busy)
        with self.stats.lock:
            for name, seconds in timings.items():
                self.stats.stage(name).add(seconds)
            if media_s:
                self.stats.media_s += media_s
            self.stats.isolated_batches += isolated
        per_item = busy / n if n else 0.0
        self.item_time = per_item if not self.item_time else (1 - _EWMA) * self.item_time + _EWMA * per_item

    def lower_max_batch(self, oom_batch: int, log: Any) -> None:
        """A batch of ``oom_batch`` items ran out of memory: serve at most half that from now on."""
        with self.stats.lock:
            self.stats.oom_events += 1
        half = max(1, oom_batch // 2)
        if half < self.max_batch:
            if not self._oom_logged:
                log.warning("%s: out of memory at batch %d; max batch lowered to %d", self.name, oom_batch, half)
                self._oom_logged = True
            self.max_batch = half

    # -- reports ------------------------------------------------------------------------------------------
    def placement(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {
            "worker": self.index, "device": self.device.label, "backend": self.backend, "healthy": self.healthy,
            "enabled": self.enabled, "max_batch_size": self.max_batch, "current_queue_depth": len(self.batcher),
            "outstanding": self.outstanding, "item_time_ms": round(self.item_time * 1e3, 4), **self.placement(),
            "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}",
        }

    def health_extra(self) -> dict[str, Any] | None:
        return None

    # -- restarts -----------------------------------------------------------------------------------------
    @property
    def returning(self) -> bool:
        """Not serving now but being brought back (its process restarts): items routed here wait for it."""
        return False

    def back_in_s(self) -> float | None:
        """Seconds until it is expected to serve: 0 when it does, ``None`` when it is not coming back."""
        return 0.0 if self.healthy else None


class RestartingWorker(BaseWorker):
    """A worker whose model copy lives elsewhere and can die (a child process, a Ray actor): a circuit breaker,
    the restart backoff, what becomes of a dead copy's items, a local model instance for metadata, and the
    breaker's fields in its reports."""

    def __init__(self, *, index: int, device: Device, config: PoolConfig, hooks: WorkerHooks,
                 make_model: Callable[[], Any]) -> None:
        super().__init__(index=index, device=device, config=config, hooks=hooks)
        self.breaker = CircuitBreaker(config.breaker_threshold, config.breaker_cooldown_s)
        self._make_model = make_model
        self._model: Any = None
        self._stop = threading.Event()  # the pool is closing: no more restarts
        self._life = False  # up once, and the supervisor still brings it back when it dies
        self._down_since: float | None = None  # when the current copy's death was seen
        self._backoff_s = 0.0  # the wait chosen before the restart under way
        self._waited_s = 0.0  # backoff waited since the copy's death (over failed start-ups too)
        self._failed_starts_s = 0.0  # seconds spent in start-ups that failed since the copy's death
        self._kills_in_setup = 0  # start-ups in a row cut short by a signal (not the model's failure)
        self._launch_s = 0.0  # how long the last successful start-up took (the estimate for the next one)
        self.launch_phases: dict[str, float] = {}  # the backend's breakdown of its last start-up (seconds)
        self.setup_breakdown: dict[str, float] = {}  # the first start-up's breakdown
        self.restart_history: list[dict[str, float]] = []  # the last restarts' breakdowns, newest last

    # -- the supervisor: what a backend fills in ---------------------------------------------------------
    restart_what = "restarting"  # for the log line before a restart
    free_setup_kills = 3  # start-ups in a row killed from outside that restart at once, without a failure

    def setup_interrupted(self) -> bool:
        """The last failed start-up was cut short from outside (its process killed by a signal: ``kill -9``,
        the out-of-memory killer), not failed by the model."""
        return False

    def _launch(self) -> bool:
        """Start the copy and wait for its setup; False (with ``error``) when it failed."""
        raise NotImplementedError

    def _first_up(self) -> None:
        """The first copy is up: start the threads that feed it and read its answers."""
        raise NotImplementedError

    def _serve_until_down(self) -> None:
        """Return when the copy died (after handing its items on) or the pool closes."""
        raise NotImplementedError

    def _closed(self) -> None:
        """The supervisor stops: fail what is still unanswered, if the backend holds any."""

    def _supervise(self) -> None:
        """The supervisor thread: start the copy, serve until it dies, restart it after the backoff, until the
        pool closes. A copy that fails its first setup is not restarted: the pool raises or starts degraded."""
        first = True
        while not self._stop.is_set():
            self.launch_phases = {}
            t0 = time.monotonic()
            ok = self._launch()
            if ok:
                self._launch_s = time.monotonic() - t0
            if first:
                first = False
                if ok:
                    self.setup_breakdown = {**self.launch_phases, "total": round(self._launch_s, 4)}
                    self._life = True
                self.ready.set()
                if not ok:
                    return
                self._first_up()
            elif ok:
                self._restarted(time.monotonic())
            at_once = False
            if ok:
                self._kills_in_setup = 0
                self._serve_until_down()
                self.went_down()
            else:
                self._failed_starts_s += time.monotonic() - t0
                # A start-up killed from outside says nothing about the model: counted (setup_kills), restarted
                # at once, and only after a few in a row treated as a failure (backoff, circuit breaker).
                at_once = self.setup_interrupted() and self._kills_in_setup < self.free_setup_kills
                if at_once:
                    self._kills_in_setup += 1
                    with self.stats.lock:
                        self.stats.setup_kills += 1
                else:
                    self.breaker.failure(f"restart failed: {self.error}")
            if self._stop.is_set() or not self.wait_to_restart(self._stop, self.restart_what, at_once=at_once):
                break
        self._life = False
        self.hooks.state()
        self._closed()

    def went_down(self) -> None:
        """The copy's death was seen (call before telling the pool, so that it holds items meanwhile)."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._waited_s = self._failed_starts_s = 0.0

    def _restarted(self, now: float) -> None:
        """A restart finished: record where its time went (``launch_phases``) and log it."""
        since = self._down_since if self._down_since is not None else now
        self._down_since = None
        total = now - since
        # from the death seen to the new start, less the waits and the start-ups that failed: reaping
        other = total - self._waited_s - self._failed_starts_s - self._launch_s
        b = {"total": total, "reap": max(0.0, other), "backoff": self._waited_s}
        if self._failed_starts_s:
            b["failed_starts"] = self._failed_starts_s  # e.g. a start-up killed before it was ready
        b.update(self.launch_phases)
        b = {k: round(v, 4) for k, v in b.items()}
        with self.stats.lock:
            self.stats.restart_s_total += total
            self.stats.last_restart = b
        self.restart_history = (self.restart_history + [b])[-16:]
        log.warning("%s: back %.2fs after its failure (%s)", self.name, total,
                    ", ".join(f"{k} {v:.3f}s" for k, v in b.items() if k != "total"))

    @property
    def returning(self) -> bool:
        return self._life and not self._stop.is_set() and not self.healthy

    def back_in_s(self) -> float | None:
        if self.healthy:
            return 0.0
        if not self.returning:
            return None
        now = time.monotonic()
        since = self._down_since if self._down_since is not None else now
        # the measured start-up time; a restart that is slower than the last one is expected any moment
        return max(0.1, since + self._backoff_s + self._launch_s - now)

    def expire_queued(self) -> None:
        """Fail the queued items whose deadline passed while the copy is down (no feeder admits them)."""
        late = self.batcher.expire(time.monotonic())
        if late:
            self.fail(late, DeadlineExceeded(f"deadline passed while {self.name} restarted"))

    @property
    def model(self) -> Any:
        """A local, not set-up instance for metadata (the served copies live elsewhere)."""
        if self._model is None and self.error is None:
            try:
                self._model = self._make_model()
            except Exception:  # noqa: BLE001 - metadata only
                return None
        return self._model

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.breaker.describe(), "setup_breakdown": self.setup_breakdown,
                "restart_history": self.restart_history}

    def health_extra(self) -> dict[str, Any]:
        b = self.breaker.describe()
        where = {k: v for k, v in self.placement().items() if k in ("node", "hostname", "pid")}
        return {**where, "state": b["state"], "restarts": self.stats.restarts,
                "worker_failures": b["worker_failures"], "breaker_trips": b["breaker_trips"],
                "last_failure": b["last_failure"]}

    def feed(self, cv: threading.Condition, *, in_flight: Callable[[], int], up: Callable[[], bool],
             stopping: Callable[[], bool], holding: Callable[[bool], None],
             send: Callable[[list[Request]], None]) -> None:
        """The feeder thread of a worker that serves elsewhere (a child process, a Ray actor): batches from the
        batcher to ``send``, until the pool closes (``stopping``) or the batcher is closed and empty.

        ``pipeline_depth`` batches go as soon as there is room (the far side launches the next before it
        collects the previous one), and one more, queued there so the device never waits for the round trip,
        goes only when it is full: a partial one keeps filling (``holding(True)`` meanwhile) until the far side
        is down to ``pipeline_depth`` batches, so under a backlog of small requests the batches grow instead
        of being cut each time a slot frees. ``cv`` guards ``in_flight``, ``up`` and ``stopping``.
        """
        # (CPU, a sleeping stand-in for a 4.2 ms/64-item GPU and 150 KB items: the extra batch took one process
        # worker from 10,290 to 14,675 items/s, the ideal being 15,238; pipeline_depth 3 or 4 made no clear
        # difference on 2x H200.)
        launched = max(1, self.config.pipeline_depth)
        depth = launched + 1

        def has_room() -> bool:
            return in_flight() < launched or stopping() or not up()

        while True:
            with cv:
                while not stopping() and not (up() and in_flight() < depth):
                    if self.batcher.closed and not len(self.batcher):
                        return  # closing without drain: nothing left to send
                    cv.wait(0.2)
                if stopping():
                    return
                extra = in_flight() >= launched
            if extra and len(self.batcher) < self.max_batch:
                holding(True)
                try:
                    if not self.batcher.wait_full(self.max_batch, has_room, 0.2):
                        continue  # nothing changed: look again (the far side may have died meanwhile)
                finally:
                    holding(False)
            batch = self.batcher.take(self.max_batch, idle_timeout=0.2)
            if batch is None:
                return
            for group in self.groups(self.admit(batch)):
                if group[0].alone:  # a suspect goes alone, with nothing in flight beside it: a death is its own
                    self._wait_idle(cv, in_flight, up, stopping)
                    send(group)
                    self._wait_idle(cv, in_flight, up, stopping)
                else:
                    send(group)

    @staticmethod
    def _wait_idle(cv: threading.Condition, in_flight: Callable[[], int], up: Callable[[], bool],
                   stopping: Callable[[], bool]) -> None:
        with cv:
            while in_flight() and up() and not stopping():
                cv.wait(0.05)

    @staticmethod
    def groups(batch: list[Request]) -> list[list[Request]]:
        """How a batch is sent: items that already crashed a worker go alone, so a poison input cannot take its
        neighbours' retries with it; the rest in one batch, or two when some were preprocessed elsewhere (the
        worker skips preprocess for a preprocessed batch)."""
        suspects = [[r] for r in batch if r.alone]
        rest = [r for r in batch if not r.alone] if suspects else batch
        pre = [r for r in rest if r.preprocessed]
        raw = [r for r in rest if not r.preprocessed] if pre else rest
        return suspects + [g for g in (pre, raw) if g]

    def after_death(self, sent: list[list[Request]], reason: str, *, first_was_running: bool = True,
                    from_outside: bool = False) -> None:
        """The worker died (``reason``) with ``sent`` batches unanswered, oldest first. It served batches in
        order, so only the oldest was running (if ``first_was_running``): its items count an attempt and fail
        with ``WorkerDied`` past ``max_retries``; from then on they travel alone (suspects), except after a
        first death ``from_outside`` (killed by SIGKILL: an operator, an orchestrator, the out-of-memory
        killer), which they retry together, at full speed, and only a second death sends alone. The others never
        started and move without counting. Every other item goes to other healthy workers (the pool's
        ``requeue``), or waits here for the restart."""
        retry: list[Request] = []
        for k, reqs in enumerate(sent):
            for r in reqs:
                if r.future.done():
                    continue
                if k == 0 and first_was_running:
                    r.attempts += 1
                    r.alone = r.attempts > 1 or not from_outside
                    if r.attempts > self.config.max_retries:
                        self.fail([r], WorkerDied(
                            f"{self.name}: the worker {reason} while serving this item; gave up after {r.attempts} "
                            f"attempt(s) (max_retries={self.config.max_retries})"))
                        continue
                retry.append(r)
        retry += self.batcher.drain()
        left = self.hooks.requeue(self, retry) if retry else []
        if left:
            self.batcher.put_many(left)  # nowhere else to go: they wait for the restart

    def wait_to_restart(self, stop: threading.Event, what: str, *, at_once: bool = False) -> bool:
        """After a failure of a worker that restarts (a process, an actor): wait the backoff, exponential in
        the breaker's failures in a row and capped, with jitter (none when ``at_once``); count a restart.
        False when ``stop`` is set meanwhile (the pool is closing)."""
        k = max(1, self.breaker.failures)
        # The first failure in a row restarts at once: a copy that served before is most likely fine again
        # (killed, OOM-killed, a sticky CUDA error) and items wait for it. Repeated failures back off.
        delay = 0.0 if k == 1 or at_once else min(self.config.restart_backoff_max_s,
                                                  self.config.restart_backoff_s * 2 ** (k - 2))
        delay *= random.uniform(0.75, 1.25)
        self._backoff_s = delay
        self._waited_s += delay
        log.warning("%s: %s in %.2fs (failure %d in a row)", self.name, what, delay, k)
        end = time.monotonic() + delay
        while True:
            self.expire_queued()
            left = end - time.monotonic()
            if left <= 0:
                break
            if stop.wait(min(left, 0.05)):
                return False
        if stop.is_set():
            return False
        with self.stats.lock:
            self.stats.restarts += 1
        return True

    def answer(self, reqs: list[Request], done: wire.BatchDone, timings: dict[str, float], now: float) -> None:
        """Answer a batch served away from the pool (a child process, a Ray actor) from its ``BatchDone``: lower
        the batch size after out-of-memory, fail every item with the batch's error, or count the batch
        (``timings``) and answer each item with its output or its own error."""
        if done.oom_batch:
            self.lower_max_batch(done.oom_batch, log)
        if done.error is not None:
            self.fail(reqs, wire.error_from(done.error))
            return
        self.record_batch(len(reqs), timings, done.media_s, done.isolated)
        ok = []
        for i, r in enumerate(reqs):
            if i in done.errors:
                self.fail([r], wire.error_from(done.errors[i]))
            else:
                ok.append((r, done.outputs[i]))
        self.resolve(ok, now)
