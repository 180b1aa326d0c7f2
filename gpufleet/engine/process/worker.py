"""A process worker: one spawned child per worker, pinned to its GPU, supervised, restarted when it dies.

Three parent threads per worker: the *feeder* takes batches from the worker's batcher and sends them (up
to two in flight, so the child never waits for the next one) and the *reader* receives heartbeats, progress
and results (one per child generation), both run by :class:`~gpufleet.engine.process.link.ChildLink`; the
*supervisor* (here)
starts the child, watches it (process sentinel, heartbeat age, ``batch_timeout_s``, per-item deadlines)
and, when it dies, hands its items back to the pool and starts a new one after an exponential backoff with
jitter. A circuit breaker keeps a worker that keeps dying out of the pool's routes until a probe succeeds.

An item that was running in a child that died counts one attempt; after ``max_retries`` retries it fails
with ``WorkerError``. Items that were only queued are moved without counting. Items that already crashed a
worker are sent alone, so a poison input cannot take innocent neighbours' retries with it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from gpufleet.config import PoolConfig
from gpufleet.devices.device import Device
from gpufleet.engine import wire
from gpufleet.engine.backend import WorkerHooks
from gpufleet.engine.process.child import STICKY_EXIT, ChildSpec, child_device
from gpufleet.engine.process.child import main as child_main
from gpufleet.engine.process.link import ChildLink, Sent
from gpufleet.engine.process.placement import pin_env, verify_placement
from gpufleet.engine.request import Request
from gpufleet.engine.worker import RestartingWorker
from gpufleet.errors import DeadlineExceeded, DeviceError, PoolClosed, WorkerError

__all__ = ["ProcessWorker"]

log = logging.getLogger(__name__)

_SPAWN_LOCK = threading.Lock()  # Process.start() touches multiprocessing globals; the children import in parallel
_CTX = mp.get_context("spawn")


class ProcessWorker(RestartingWorker):
    """Serves one device from a child process. Created by :func:`gpufleet.engine.process.make_fleet`."""

    backend = "process"

    def __init__(self, *, index: int, device: Device, config: PoolConfig, hooks: WorkerHooks, model_blob: bytes,
                 make_model: Callable[[], Any], prefix: str, threads_per_child: int | None = None) -> None:
        super().__init__(index=index, device=device, config=config, hooks=hooks, make_model=make_model)
        self.pid: int | None = None
        self.context_on: str | None = None  # the child's GPU as it reported it: "cuda:0 NVIDIA H100 (GPU-1a2b…)"
        self.link = ChildLink(self, prefix)
        self._blob = model_blob
        self._prefix = prefix
        self._env = pin_env(device, threads_per_child)
        self._proc: Any = None
        self._reader: threading.Thread | None = None
        self._started = threading.Event()  # this generation answered Ready / SetupFailed
        self._start_error: BaseException | None = None
        self._ready_msg: wire.Ready | None = None
        # A spare child per worker (imports done, no device touched) cuts a restart's spawn and import time;
        # default: for GPU workers, where that is seconds (torch, CUDA libraries).
        self._use_spare = config.spare_process if config.spare_process is not None else device.is_cuda
        self._spare: tuple[int, Any, Any] | None = None  # (its generation, process, pipe)
        self._supervisor = threading.Thread(target=self._supervise, name=f"gpufleet-{self.name}-sup", daemon=True)
        self._feeder = threading.Thread(target=self.link.feed, name=f"gpufleet-{self.name}-feed", daemon=True)

    # -- what the pool reads ------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self.link.up and self.breaker.allows_traffic

    def placement(self) -> dict[str, Any]:
        return {"pid": self.pid, "context_on": self.context_on}

    # -- what the link tells -------------------------------------------------------------------------------
    def on_start_message(self, msg: wire.Hello | wire.Ready | wire.SetupFailed) -> None:
        """The child's start-up, from the reader thread."""
        if isinstance(msg, wire.Hello):
            self.context_on = (f"{msg.kind}:{msg.current_device} {msg.name} ({msg.uuid})" if msg.kind == "cuda"
                               else msg.kind)
            try:
                verify_placement(self.name, self.device, msg, self._env)
            except DeviceError as exc:
                self._start_error = exc
                self._started.set()
        elif isinstance(msg, wire.Ready):
            self._ready_msg = msg
            self._started.set()
        else:
            err = wire.error_from(msg.error)
            self._start_error = WorkerError(f"{self.name} failed in setup: {msg.error.type}: {msg.error.message}")
            self._start_error.__cause__ = err.__cause__
            self._started.set()

    def on_batch_answered(self) -> None:
        """The child answered a batch: it works (closes a half-open circuit)."""
        if self.breaker.success():
            log.info("%s: circuit closed", self.name)
            self.hooks.state()

    def kill_child(self) -> None:
        if self._proc is not None:
            self._proc.kill()

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._supervisor.start()

    def join(self, timeout: float | None = None) -> None:
        """Stop: let the feeder drain, ask the child to exit (kill it after a grace period), clean up."""
        end = None if timeout is None else time.monotonic() + timeout
        self.batcher.close()
        if self._feeder.is_alive():
            self._feeder.join(None if end is None else max(0.1, end - time.monotonic()))
        self._stop.set()
        self.link.stop()
        proc = self._proc
        if proc is not None and self.link.inflight:
            proc.kill()  # closing without drain: what it runs is failed, not awaited
        if proc is not None and proc.is_alive():
            self.link.send(wire.Shutdown())
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
        if self._supervisor.is_alive():
            self._supervisor.join(None if end is None else max(0.1, end - time.monotonic()))
        spare, self._spare = self._spare, None
        if spare is not None:
            _drop(spare[1], spare[2])
        self.link.close_segments(all_generations=True)

    # -- supervisor ---------------------------------------------------------------------------------------
    def _first_up(self) -> None:
        self._feeder.start()

    def _serve_until_down(self) -> None:
        self._watch()

    def _closed(self) -> None:
        self._fail_sent(self.link.take_inflight(), PoolClosed("the pool closed before the item was served"))

    def _launch(self) -> bool:
        try:
            return self._spawn()
        except Exception as exc:  # noqa: BLE001 - e.g. the OS refused a process: report, never hang start-up
            self.error = WorkerError(f"{self.name}: cannot start the worker process: {exc}")
            log.error("%s", self.error)
            return False

    def _start_process(self, gen: int, *, spare: bool) -> tuple[Any, Any]:
        """Spawn the child of generation ``gen`` (a ``spare`` waits for ``Start`` after its imports)."""
        parent_conn, child_conn = _CTX.Pipe(duplex=True)
        spec = ChildSpec(worker=self.index, name=self.name,
                         device=child_device(self.device) if self._env.get("CUDA_VISIBLE_DEVICES")
                         and self.device.is_cuda else self.device, env=self._env, model=self._blob,
                         prefix=f"{self._prefix}g{gen}", heartbeat_s=min(0.5, self.config.heartbeat_timeout_s / 4),
                         batch_buckets=self.config.batch_buckets, max_batch_size=self.config.max_batch_size,
                         log_level=logging.getLogger().level or 30, restart=gen > 1, spare=spare)
        proc = _CTX.Process(target=child_main, args=(child_conn, spec), name=f"gpufleet-{self.name}", daemon=True)
        with _SPAWN_LOCK:
            proc.start()
        child_conn.close()
        return proc, parent_conn

    def _take_spare(self, gen: int) -> tuple[Any, Any] | None:
        """The spare spawned for generation ``gen``, told to start, if it is still there."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        spare_gen, proc, conn = spare
        try:
            if spare_gen != gen or not proc.is_alive():
                raise OSError("gone")
            conn.send_bytes(msgspec.msgpack.encode(wire.Start()))
        except (OSError, ValueError):
            _drop(proc, conn)
            return None
        return proc, conn

    def _prepare_spare(self) -> None:
        """Spawn the next generation's child now, while this one serves: its interpreter start and imports
        (torch: seconds) are then done before a restart needs them."""
        if not self._use_spare or self._stop.is_set():
            return
        try:
            proc, conn = self._start_process(self.link.gen + 1, spare=True)
        except Exception as exc:  # noqa: BLE001 - only an optimisation: a restart spawns a fresh child
            log.warning("%s: cannot start a spare process: %s", self.name, exc)
            return
        self._spare = (self.link.gen + 1, proc, conn)

    def _spawn(self) -> bool:
        """Start a child (the spare if one waits) and wait until it is set up; False (with ``self.error``)
        when it is not. ``launch_phases`` says where the time went."""
        gen = self.link.new_generation()
        self._started.clear()
        self._start_error = None
        self._ready_msg = None
        t0 = time.monotonic()
        took = self._take_spare(gen)
        proc, parent_conn = took if took is not None else self._start_process(gen, spare=False)
        self._proc, self.pid = proc, proc.pid
        self.link.connect(parent_conn)
        self._reader = threading.Thread(target=self.link.read, args=(gen, parent_conn), daemon=True,
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
            self.expire_queued()
            self._started.wait(0.05)
        if self._start_error is not None:
            self.error = self._start_error
            log.error("%s failed in setup: %s", self.name, self.error)
            self._reap(proc)
            return False
        self.launch_phases = self._phases(t0, took is not None)
        self.error = None
        self.link.set_up(True)
        self.hooks.state()
        log.info("%s: process %d ready on %s%s", self.name, proc.pid, self.device.label,
                 " (the spare)" if took is not None else "")
        self._prepare_spare()
        return True

    def _phases(self, t0: float, spare: bool) -> dict[str, float]:
        """Where a start-up's time went: spawning the interpreter and importing (``spawn``; a spare did that
        ahead, so then it is only the hand-over), the child's phases, and the rest (``ready``: messages)."""
        ready = self._ready_msg
        total = time.monotonic() - t0
        if ready is None or not ready.t_main:
            return {}
        out = {"spare_start" if spare else "spawn_imports": max(0.0, ready.t_main - t0), **ready.timings}
        out["ready"] = max(0.0, total - sum(out.values()))
        return {k: round(v, 4) for k, v in out.items()}

    def _reap(self, proc: Any) -> None:
        if proc.is_alive():
            proc.kill()
        proc.join(5.0)
        if self._reader is not None:
            self._reader.join(2.0)
        self.link.close_segments()

    def _watch(self) -> None:
        proc, cfg, link = self._proc, self.config, self.link
        reason = ""
        while True:
            if mp.connection.wait([proc.sentinel], timeout=0.1):
                proc.join(2.0)  # the sentinel can fire a moment before the exit status is there
                reason = reason or link.death_note or _exit(proc)
                break
            now = time.monotonic()
            if not reason and now - link.last_beat > cfg.heartbeat_timeout_s:
                reason = f"sent no heartbeat for {now - link.last_beat:.1f}s (hung); killed"
                proc.kill()
            oldest, running = link.running()
            if not reason and oldest is not None and cfg.batch_timeout_s and oldest.t_start \
                    and now - oldest.t_start > cfg.batch_timeout_s:
                reason = f"ran a batch past batch_timeout_s={cfg.batch_timeout_s}; killed"
                proc.kill()
            self._expire(running, now)
            if not reason and oldest is not None and oldest.t_start and oldest.sent \
                    and now - oldest.t_start > cfg.heartbeat_timeout_s and all(r.future.done() for r in oldest.reqs):
                # A call that never returns (heartbeats go on): once nobody waits for its batch any more, the
                # items queued behind it would only expire too.
                reason = (f"ran a batch for {now - oldest.t_start:.1f}s, past every item's deadline (hung); "
                          "killed")
                proc.kill()
            if self.breaker.poll():
                log.info("%s: circuit half-open, probing", self.name)
                self.hooks.state()
        self._on_death(proc, reason)

    def _expire(self, reqs: list[Request], now: float) -> None:
        """Fail running items whose deadline passed; the child's late answer is dropped."""
        late = [r for r in reqs if r.deadline is not None and now > r.deadline and not r.future.done()]
        for r in late:
            self.fail([r], DeadlineExceeded(f"deadline passed after {now - r.t_submit:.3f}s "
                                            f"(running on {self.name})"))

    def _on_death(self, proc: Any, reason: str) -> None:
        self.went_down()  # first: the pool keeps holding items for us while we restart
        self.link.set_up(False)  # the feeder stops sending
        self.link.death_note = ""
        self.hooks.state()
        self._reap(proc)  # after this the reader has handled every result the child got out
        inflight = self.link.take_inflight()
        if self._stop.is_set():
            self._fail_sent(inflight, PoolClosed("the pool closed before the item was served"))
            return
        self.breaker.failure(reason)
        log.warning("%s: process %s %s", self.name, proc.pid, reason)
        # Batches go out in id order: when the oldest was sent, the child was running it.
        self.after_death([sent.reqs for sent in inflight], f"process {reason}",
                         first_was_running=bool(inflight) and inflight[0].sent)

    def _fail_sent(self, inflight: list[Sent], err: PoolClosed) -> None:
        for sent in inflight:
            self.fail(sent.reqs, err)


def _drop(proc: Any, conn: Any) -> None:
    """Let a spare go: closing its pipe ends it; kill it if it lingers."""
    try:
        conn.close()
    except OSError:
        pass
    proc.join(1.0)
    if proc.is_alive():
        proc.kill()
        proc.join(1.0)


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
