"""A process worker: one spawned child per worker, pinned to its GPU, supervised, restarted when it dies.

Three parent threads per worker: the *feeder* takes batches from the worker's batcher and sends them (up
to two in flight, so the child never waits for the next one) and the *reader* receives heartbeats, progress
and results (one per child generation), both in :mod:`gpufleet.engine.process_io`; the *supervisor*
starts the child, watches it (process sentinel, heartbeat age, ``batch_timeout_s``, per-item deadlines)
and, when it dies, hands its items back to the pool and starts a new one after an exponential backoff with
jitter. A circuit breaker keeps a worker that keeps dying out of the pool's routes until a probe succeeds.

An item that was running in a child that died counts one attempt; after ``max_retries`` retries it fails
with ``WorkerError``. Items that were only queued are moved without counting. Items that already crashed a
worker are sent alone, so a poison input cannot take innocent neighbours' retries with it.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import multiprocessing.connection
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from gpufleet.config import PoolConfig
from gpufleet.devices.device import Device
from gpufleet.engine import messages as m
from gpufleet.engine.batcher import Batcher
from gpufleet.engine.breaker import CircuitBreaker
from gpufleet.engine.child import STICKY_EXIT, ChildSpec, child_device
from gpufleet.engine.child import main as child_main
from gpufleet.engine.placement import pin_env
from gpufleet.engine.process_io import Sent, WireIO, attempts
from gpufleet.engine.request import Request
from gpufleet.engine.shm import Attachments, Codec, SegmentPool, unlink_prefix
from gpufleet.engine.stats import WorkerStats
from gpufleet.errors import DeadlineExceeded, PoolClosed, WorkerError

__all__ = ["ProcessWorker"]

log = logging.getLogger(__name__)

_SPAWN_LOCK = threading.Lock()  # Process.start() touches multiprocessing globals; the children import in parallel
_CTX = mp.get_context("spawn")


class ProcessWorker(WireIO):
    """Serves one device from a child process. Created and driven by :class:`gpufleet.Pool`."""

    def __init__(self, *, index: int, device: Device, model_blob: bytes, make_model: Callable[[], Any],
                 config: PoolConfig, prefix: str, executor: Executor, on_done: Callable[[Any, int], None],
                 on_state: Callable[[], None], requeue: Callable[[Any, list[Request]], list[Request]],
                 threads_per_child: int | None = None) -> None:
        self.index = index
        self.device = device
        self.name = f"worker-{index}@{device.label}"
        self.config = config
        self.batcher = Batcher(config.max_wait_ms / 1000.0)
        self.stats = WorkerStats()
        self.outstanding = 0  # guarded by the pool's lock
        self.item_time = 0.0
        self.enabled = True
        self.error: BaseException | None = None
        self.max_batch = config.max_batch_size
        self.preprocess = None  # runs in the child
        self.postprocess = None
        self.ready = threading.Event()
        self.breaker = CircuitBreaker(config.breaker_threshold, config.breaker_cooldown_s)
        self.pid: int | None = None
        self.context_on: str | None = None  # the child's GPU as it reported it: "cuda:0 NVIDIA H100 (GPU-1a2b…)"
        self._make_model = make_model
        self._model: Any = None
        self._blob = model_blob
        self._prefix = prefix
        self._executor = executor
        self._on_done = on_done
        self._on_state = on_state
        self._requeue = requeue
        self._env = pin_env(device, threads_per_child)
        self._lock = threading.Condition()
        self._send_lock = threading.Lock()
        self._resolve_lock = threading.Lock()  # one of reader / supervisor answers an in-flight item
        self._seg_lock = threading.Lock()
        self._pool = SegmentPool(f"{prefix}p")
        self._attach = Attachments()
        self._codec = Codec(self._pool, self._attach, m.Message, copy=True)
        self._plain = __import__("msgspec").msgpack.Encoder()
        self._ids = itertools.count()
        self._inflight: dict[int, Sent] = {}
        self._gen = 0
        self._up = False
        self._stopping = False
        self._holding = False  # the feeder waits for a full batch or room in the child (process_io._feed)
        self._stop = threading.Event()
        self._proc: Any = None
        self._conn: Any = None
        self._reader: threading.Thread | None = None
        self._last_beat = 0.0
        self._started = threading.Event()  # this generation answered Ready / SetupFailed
        self._start_error: BaseException | None = None
        self._death_note = ""
        self._supervisor = threading.Thread(target=self._supervise, name=f"gpufleet-{self.name}-sup", daemon=True)
        self._feeder = threading.Thread(target=self._feed, name=f"gpufleet-{self.name}-feed", daemon=True)

    # -- what the pool reads ------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self._up and self.breaker.allows_traffic

    @property
    def model(self) -> Any:
        """A local, not set-up instance for metadata (the served copies live in the children)."""
        if self._model is None and self.error is None:
            try:
                self._model = self._make_model()
            except Exception:  # noqa: BLE001 - metadata only
                return None
        return self._model

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._supervisor.start()

    def join(self, timeout: float | None = None) -> None:
        """Stop: let the feeder drain, ask the child to exit (kill it after a grace period), clean up."""
        end = None if timeout is None else time.monotonic() + timeout
        self.batcher.close()
        if self._feeder.is_alive():
            self._feeder.join(None if end is None else max(0.1, end - time.monotonic()))
        with self._lock:
            self._stopping = True
            self._stop.set()
            self._lock.notify_all()
        proc, conn = self._proc, self._conn
        if proc is not None and self._inflight:
            proc.kill()  # closing without drain: what it runs is failed, not awaited
        if proc is not None and proc.is_alive():
            try:
                with self._send_lock:
                    conn.send_bytes(self._plain.encode(m.Shutdown()))
            except (OSError, ValueError):
                pass
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
        if self._supervisor.is_alive():
            self._supervisor.join(None if end is None else max(0.1, end - time.monotonic()))
        self._cleanup_segments(all_generations=True)

    def _cleanup_segments(self, all_generations: bool = False) -> None:
        self._attach.close()
        with self._seg_lock:
            if all_generations:
                self._pool.close()
            else:
                self._pool.release_all()
        unlink_prefix(f"{self._prefix}g" if all_generations else f"{self._prefix}g{self._gen}c")

    # -- supervisor ---------------------------------------------------------------------------------------
    def _supervise(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                ok = self._launch()
            except Exception as exc:  # noqa: BLE001 - e.g. the OS refused a process: report, never hang start-up
                self.error = WorkerError(f"{self.name}: cannot start the worker process: {exc}")
                log.error("%s", self.error)
                ok = False
            if first:
                first = False
                self.ready.set()
                if not ok:
                    return  # a setup failure at start-up: the pool raises or starts degraded
                self._feeder.start()
            if ok:
                self._watch()
            else:
                self.breaker.failure(f"restart failed: {self.error}")
            if self._stop.is_set():
                break
            k = max(1, self.breaker.failures)
            delay = min(self.config.restart_backoff_max_s, self.config.restart_backoff_s * 2 ** (k - 1))
            delay *= random.uniform(0.75, 1.25)
            log.warning("%s: restarting in %.2fs (failure %d in a row)", self.name, delay, k)
            if self._stop.wait(delay):
                break
            with self.stats.lock:
                self.stats.restarts += 1
        self._fail_inflight(PoolClosed("the pool closed before the item was served"))

    def _launch(self) -> bool:
        """Spawn a child and wait until it is set up; False (with ``self.error``) when it is not."""
        with self._lock:
            self._gen += 1
            gen = self._gen
        self._started.clear()
        self._start_error = None
        parent_conn, child_conn = _CTX.Pipe(duplex=True)
        spec = ChildSpec(worker=self.index, device=child_device(self.device) if self._env.get("CUDA_VISIBLE_DEVICES")
                         and self.device.is_cuda else self.device, env=self._env, model=self._blob,
                         prefix=f"{self._prefix}g{gen}", heartbeat_s=min(0.5, self.config.heartbeat_timeout_s / 4),
                         batch_buckets=self.config.batch_buckets, max_batch_size=self.config.max_batch_size,
                         log_level=logging.getLogger().level or 30)
        proc = _CTX.Process(target=child_main, args=(child_conn, spec), name=f"gpufleet-{self.name}", daemon=True)
        with _SPAWN_LOCK:
            proc.start()
        child_conn.close()
        self._proc, self._conn, self.pid = proc, parent_conn, proc.pid
        self._last_beat = time.monotonic()
        self._reader = threading.Thread(target=self._read, args=(gen, parent_conn), daemon=True,
                                        name=f"gpufleet-{self.name}-read{gen}")
        self._reader.start()
        end = time.monotonic() + self.config.start_timeout_s
        while not self._started.is_set():
            if self._stop.is_set():
                self._start_error = PoolClosed("the pool closed during start-up")
                break
            if not proc.is_alive() and not self._started.wait(0.5):
                self._start_error = WorkerError(
                    f"{self.name}: the process exited during setup ({_exit(proc)}); its stderr says why (a script "
                    "that creates the Pool must do so under `if __name__ == \"__main__\":`)")
                break
            if time.monotonic() > end:
                self._start_error = WorkerError(f"{self.name}: setup took longer than start_timeout_s="
                                                f"{self.config.start_timeout_s}")
                break
            self._started.wait(0.05)
        if self._start_error is not None:
            self.error = self._start_error
            log.error("%s failed in setup: %s", self.name, self.error)
            self._reap(proc)
            return False
        self.error = None
        with self._lock:
            self._up = True
            self._lock.notify_all()
        self._on_state()
        log.info("%s: process %d ready on %s", self.name, proc.pid, self.device.label)
        return True

    def _reap(self, proc: Any) -> None:
        if proc.is_alive():
            proc.kill()
        proc.join(5.0)
        if self._reader is not None:
            self._reader.join(2.0)
        self._cleanup_segments()

    def _watch(self) -> None:
        proc, cfg = self._proc, self.config
        reason = ""
        while True:
            if mp.connection.wait([proc.sentinel], timeout=0.1):
                proc.join(2.0)  # the sentinel can fire a moment before the exit status is there
                reason = reason or self._death_note or _exit(proc)
                break
            now = time.monotonic()
            if not reason and now - self._last_beat > cfg.heartbeat_timeout_s:
                reason = f"sent no heartbeat for {now - self._last_beat:.1f}s (hung); killed"
                proc.kill()
            with self._lock:
                oldest = min(self._inflight.items(), default=None)
                running = [r for s in self._inflight.values() if s.sent for r in s.reqs]
            if not reason and oldest is not None and cfg.batch_timeout_s and oldest[1].t_start \
                    and now - oldest[1].t_start > cfg.batch_timeout_s:
                reason = f"ran a batch past batch_timeout_s={cfg.batch_timeout_s}; killed"
                proc.kill()
            self._expire(running, now)
            if self.breaker.poll():
                log.info("%s: circuit half-open, probing", self.name)
                self._on_state()
        self._on_death(proc, reason)

    def _expire(self, reqs: list[Request], now: float) -> None:
        """Fail running items whose deadline passed; the child's late answer is dropped."""
        late = [r for r in reqs if r.deadline is not None and now > r.deadline and not r.future.done()]
        if not late:
            return
        with self._resolve_lock:
            late = [r for r in late if not r.future.done()]
            for r in late:
                r.future.set_exception(DeadlineExceeded(f"deadline passed after {now - r.t_submit:.3f}s "
                                                        f"(running on {self.name})"))
        if late:
            with self.stats.lock:
                self.stats.errors += len(late)
            self._on_done(self, len(late))

    def _on_death(self, proc: Any, reason: str) -> None:
        with self._lock:
            self._up = False  # the feeder stops sending
            self._lock.notify_all()
        self._death_note = ""
        self._on_state()
        self._reap(proc)  # after this the reader has handled every result the child got out
        with self._lock:
            inflight = [s for _, s in sorted(self._inflight.items())]
            self._inflight = {}
        if self._stopping:
            self._fail_sent(inflight, PoolClosed("the pool closed before the item was served"))
            return
        self.breaker.failure(reason)
        log.warning("%s: process %s %s", self.name, proc.pid, reason)
        retry: list[Request] = []
        # The child serves batches in order: only the oldest one sent was running when it died. Batches
        # behind it never started, so their items are moved without counting an attempt.
        culprit = next((sent for sent in inflight if sent.sent), None)
        for sent in inflight:
            for r in sent.reqs:
                if r.future.done():
                    continue
                if sent is culprit:
                    n = attempts(r) + 1
                    r.future._gf_attempts = n  # type: ignore[attr-defined]
                    if n > self.config.max_retries:
                        self._fail([r], WorkerError(
                            f"{self.name}: the worker process {reason} while serving this item; gave up after {n} "
                            f"attempt(s) (max_retries={self.config.max_retries})"))
                        continue
                retry.append(r)
        retry += self.batcher.drain()
        left = self._requeue(self, retry) if retry else []
        if left:
            self.batcher.put_many(left)  # nowhere else to go: they wait for the restart

    def describe(self) -> dict:
        return {
            "worker": self.index, "device": self.device.label, "backend": "process", "pid": self.pid,
            "healthy": self.healthy, "enabled": self.enabled, "max_batch_size": self.max_batch,
            "current_queue_depth": len(self.batcher), "outstanding": self.outstanding,
            "item_time_ms": round(self.item_time * 1e3, 4), "context_on": self.context_on,
            "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}",
            **self.breaker.describe(),
        }

    def health_extra(self) -> dict:
        b = self.breaker.describe()
        return {"pid": self.pid, "state": b["state"], "restarts": self.stats.restarts,
                "worker_failures": b["worker_failures"], "breaker_trips": b["breaker_trips"],
                "last_failure": b["last_failure"]}


def _exit(proc: Any) -> str:
    code = proc.exitcode
    if code is None:
        return "stopped responding"
    if code < 0:
        import signal

        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == STICKY_EXIT:
        return "exited after a sticky CUDA error"
    return f"exited with code {code}"
