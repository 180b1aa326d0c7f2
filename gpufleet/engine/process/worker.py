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
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from gpufleet.config import PoolConfig
from gpufleet.devices.device import Device
from gpufleet.engine import wire
from gpufleet.engine.backend import WorkerHooks
from gpufleet.engine.process.child import STICKY_EXIT, ChildSpec, child_device
from gpufleet.engine.process.child import main as child_main
from gpufleet.engine.process.link import ChildLink, Sent
from gpufleet.engine.process.placement import pin_env, verify_placement
from gpufleet.engine.process.spare import IMPORTING, Spare, spare_mode
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
        self._hello_seen = False  # this generation got as far as its own main()
        self._died_by_signal = False  # the last failed start-up: its process was killed by a signal
        # A spare child per worker cuts a restart to the model's setup (imports-only) or to the hand-over
        # (warm); default: imports-only for GPU workers, where spawning and importing take seconds.
        self.spare_mode = spare_mode(config.spare_process, device.is_cuda)
        self._spare: Spare | None = None
        self._spare_lock = threading.Lock()  # the supervisor replaces the spare, join() drops it
        self._supervisor = threading.Thread(target=self._supervise, name=f"gpufleet-{self.name}-sup", daemon=True)
        self._feeder = threading.Thread(target=self.link.feed, name=f"gpufleet-{self.name}-feed", daemon=True)

    # -- what the pool reads ------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self.link.up and self.breaker.allows_traffic

    def placement(self) -> dict[str, Any]:
        return {"pid": self.pid, "context_on": self.context_on}

    @property
    def spare_state(self) -> str | None:
        """The spare child's state (:data:`~gpufleet.engine.process.spare.STATES`, or ``"dead"``); ``None``
        when there is none."""
        spare = self._spare
        return None if spare is None else spare.state

    def describe(self) -> dict[str, Any]:
        spare = self._spare
        return {**super().describe(), "spare_mode": self.spare_mode, "spare": self.spare_state,
                "spare_pid": None if spare is None else spare.pid}

    def health_extra(self) -> dict[str, Any]:
        return {**super().health_extra(), "spare": self.spare_state}

    # -- what the link tells -------------------------------------------------------------------------------
    def on_start_message(self, msg: wire.Hello | wire.Ready | wire.SetupFailed) -> None:
        """The child's start-up, from the reader thread."""
        if isinstance(msg, wire.Hello):
            self._hello_seen = True
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
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.drop()
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

    def _start_process(self, gen: int, *, spare: bool, state: Any = None) -> tuple[Any, Any]:
        """Spawn the child of generation ``gen`` (a ``spare`` waits for ``Start`` after its imports, and
        publishes its state in the shared byte ``state``)."""
        parent_conn, child_conn = _CTX.Pipe(duplex=True)
        spec = ChildSpec(worker=self.index, name=self.name,
                         device=child_device(self.device) if self._env.get("CUDA_VISIBLE_DEVICES")
                         and self.device.is_cuda else self.device, env=self._env, model=self._blob,
                         prefix=f"{self._prefix}g{gen}", heartbeat_s=min(0.5, self.config.heartbeat_timeout_s / 4),
                         batch_buckets=self.config.batch_buckets, max_batch_size=self.config.max_batch_size,
                         log_level=logging.getLogger().level or 30, restart=gen > 1, spare=spare)
        proc = _CTX.Process(target=child_main, args=(child_conn, spec, state), name=f"gpufleet-{self.name}",
                            daemon=True)
        with _SPAWN_LOCK:
            proc.start()
        child_conn.close()
        return proc, parent_conn

    def _take_spare(self) -> Spare | None:
        """The spare, told to start, if there is one that can."""
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is None or spare.take():
            return spare
        self._spare_lost(spare)
        return None

    def _spare_lost(self, spare: Spare) -> None:
        """A spare that died or failed its warm-up: drop it; after a failed warm-up keep imports-only spares
        (the likeliest cause: a second copy of the model does not fit on the device)."""
        if spare.state == "failed":
            why = spare.failure()
            log.warning("%s: the warm spare failed its setup (%s); keeping an imports-only spare instead",
                        self.name, why)
            self.spare_mode = "imports"
        else:
            log.warning("%s: the spare process %d exited (code %s)", self.name, spare.pid, spare.proc.exitcode)
        spare.drop()

    def _ensure_spare(self) -> None:
        """Spawn the next generation's spare child unless one is there (its interpreter start and imports, for
        torch seconds, then happen before a restart needs them); tell a warm one to set up once the serving
        child is ready."""
        if self.spare_mode == "off" or self._stop.is_set():
            return
        spare = self._spare
        if spare is not None and spare.state in ("dead", "failed"):
            with self._spare_lock:
                if self._spare is spare:
                    self._spare = None
            self._spare_lost(spare)
        if self._spare is None:
            gen = self.link.gen + 1
            state = _CTX.RawValue("b", IMPORTING)
            try:
                proc, conn = self._start_process(gen, spare=True, state=state)
            except Exception as exc:  # noqa: BLE001 - only an optimisation: a restart spawns a fresh child
                log.warning("%s: cannot start a spare process: %s", self.name, exc)
                return
            with self._spare_lock:
                if self._stop.is_set():
                    Spare(gen, proc, conn, state, False).drop()
                    return
                self._spare = Spare(gen, proc, conn, state, self.spare_mode == "warm")
        if self.link.up and self._spare is not None:
            self._spare.warm_up()

    def _spawn(self) -> bool:
        """Start a child (the spare if one waits) and wait until it is set up; False (with ``self.error``)
        when it is not. ``launch_phases`` says where the time went."""
        self._started.clear()
        self._start_error = None
        self._ready_msg = None
        self._hello_seen = False
        self._died_by_signal = False
        t0 = time.monotonic()
        took = self._take_spare()
        took_as = took.state if took is not None else ""  # importing, imported, setting_up or warm
        gen = self.link.new_generation(took.gen if took is not None else None)
        proc, parent_conn = (took.proc, took.conn) if took is not None else self._start_process(gen, spare=False)
        self._proc, self.pid = proc, proc.pid
        self.link.connect(parent_conn)
        self._reader = threading.Thread(target=self.link.read, args=(gen, parent_conn), daemon=True,
                                        name=f"gpufleet-{self.name}-read{gen}")
        self._reader.start()
        if gen > 1:
            self._ensure_spare()  # a restart: the next spare starts its imports now, so a kill meanwhile finds one
        end = time.monotonic() + self.config.start_timeout_s
        while not self._started.is_set():
            if self._stop.is_set():
                self._start_error = PoolClosed("the pool closed during start-up")
                break
            if not proc.is_alive():
                self._reader.join(0.5)  # it reads what the child sent before it exited (Ready, SetupFailed)
                if not self._started.is_set():
                    proc.join(1.0)
                    self._start_error = self._died_in_setup(proc)
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
        self.launch_phases = self._phases(t0, took)
        self.error = None
        self.link.set_up(True)
        self.hooks.state()
        log.info("%s: process %d ready on %s%s", self.name, proc.pid, self.device.label,
                 f" (the spare, {took_as} when taken)" if took is not None else "")
        self._ensure_spare()
        return True

    def _died_in_setup(self, proc: Any) -> WorkerError:
        """The error for a child that exited before it was set up. Only an early exit with status 1, before
        the child's own code ran, looks like the spawn re-import of a script that starts a pool at import."""
        code = proc.exitcode
        self._died_by_signal = code is not None and code < 0
        hint = ""
        if code == 1 and not self._hello_seen:
            hint = ("; its stderr says why (a script that creates the Pool must do so under "
                    "`if __name__ == \"__main__\":`)")
        elif self._died_by_signal:
            hint = " (from outside, or the out-of-memory killer: not the model's failure)"
        elif code not in (0, None):
            hint = "; its stderr says why"
        return WorkerError(f"{self.name}: the process {_exit(proc)} during setup{hint}")

    def setup_interrupted(self) -> bool:
        return self._died_by_signal

    def _phases(self, t0: float, spare: Spare | None) -> dict[str, float]:
        """Where a start-up's time went: spawning the interpreter and importing (``spawn_imports``; with a
        spare, ``spare_start``: the hand-over, and the rest of its imports if it was taken while importing),
        the child's phases as far as they ran after ``t0`` (a warm spare ran them before: ``warm_ahead`` says
        how many seconds of its setup were done ahead), and the rest (``ready``: messages)."""
        ready = self._ready_msg
        total = time.monotonic() - t0
        if ready is None or not ready.t_main:
            return {}
        start = "spare_start" if spare is not None else "spawn_imports"
        out = {start: max(0.0, ready.t_main - t0)}
        ahead, t = 0.0, ready.t_main
        for name, seconds in ready.timings.items():  # the child's phases, in the order they ran
            before = min(seconds, max(0.0, t0 - t))
            ahead += before
            if seconds - before > 0 or not before:
                out[name] = seconds - before
            t += seconds
        rest = max(0.0, total - sum(out.values()))
        if ahead:  # a warm spare: what is left is the hand-over (its Ready waited in the pipe)
            out[start] += rest
            out["warm_ahead"] = ahead
        else:
            out["ready"] = rest
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
        from_outside = False
        while True:
            if mp.connection.wait([proc.sentinel], timeout=0.1):
                proc.join(2.0)  # the sentinel can fire a moment before the exit status is there
                # a kill -9 that neither the pool (it says why) nor the child (its death note) explains
                from_outside = not reason and not link.death_note and proc.exitcode == -signal.SIGKILL
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
            if self._spare is not None and self._spare.state in ("dead", "failed"):
                self._ensure_spare()  # the spare died (killed, out of memory): the next restart needs one
        self._on_death(proc, reason, from_outside=from_outside)

    def _expire(self, reqs: list[Request], now: float) -> None:
        """Fail running items whose deadline passed; the child's late answer is dropped."""
        late = [r for r in reqs if r.deadline is not None and now > r.deadline and not r.future.done()]
        for r in late:
            self.fail([r], DeadlineExceeded(f"deadline passed after {now - r.t_submit:.3f}s "
                                            f"(running on {self.name})"))

    def _on_death(self, proc: Any, reason: str, *, from_outside: bool = False) -> None:
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
        # A kill -9 from outside is seldom the items' doing: they retry together once.
        self.after_death([sent.reqs for sent in inflight], f"process {reason}",
                         first_was_running=bool(inflight) and inflight[0].sent, from_outside=from_outside)

    def _fail_sent(self, inflight: list[Sent], err: PoolClosed) -> None:
        for sent in inflight:
            self.fail(sent.reqs, err)


def _exit(proc: Any) -> str:
    code = proc.exitcode
    if code is None:
        return "stopped responding"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == STICKY_EXIT:
        return "exited after a sticky CUDA error"
    return f"exited with code {code}"
