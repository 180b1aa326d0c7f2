"""The data path of a process worker: the feeder sends batches, the reader answers items.

:class:`WireIO` is mixed into :class:`gpufleet.engine.process.ProcessWorker`, which owns the state it uses
(the child's pipe, the in-flight batches, the segment pool and codec) and the process life cycle. The feeder
keeps one batch more in flight than the child works on at once (three for launch/collect models), so the
next batch is already encoded in shared memory when the child finishes one; the reader copies results
out of the child's shared memory, frees the segment and resolves the futures. One of reader and supervisor
answers an in-flight item (``_resolve_lock``), exactly once, so the pool's outstanding counts stay right.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from gpufleet import errors as _errors
from gpufleet.engine import messages as m
from gpufleet.engine.placement import verify_placement
from gpufleet.engine.request import Request, fail_items, resolve_items
from gpufleet.errors import DeadlineExceeded, DeviceError, GpufleetError, InputError, WorkerError

__all__ = ["RemoteTraceback", "Sent", "WireIO", "attempts"]

log = logging.getLogger(__name__)

_EWMA = 0.2  # weight of the newest batch in the per-item time estimate used by the speed balancer


class RemoteTraceback(Exception):
    """The child's traceback, chained as ``__cause__`` of the error an item gets."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def attempts(req: Request) -> int:
    return getattr(req.future, "_gf_attempts", 0)


class Sent:
    __slots__ = ("reqs", "seg", "t_start", "sent")

    def __init__(self, reqs: list[Request], seg: str | None) -> None:
        self.reqs, self.seg, self.t_start, self.sent = reqs, seg, 0.0, False


class WireIO:
    """Feeder and reader threads of a ProcessWorker (see the module docstring)."""

    # -- reader -------------------------------------------------------------------------------------------
    def _read(self, gen: int, conn: Any) -> None:
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return
            try:
                msg = self._codec.decode(data)
            except Exception:  # noqa: BLE001 - a corrupt frame means a broken child; it will be recycled
                log.exception("%s: undecodable message from the child", self.name)
                self._death_note = "sent an undecodable message; killed"
                self._proc.kill()
                return
            self._last_beat = time.monotonic()
            if isinstance(msg, m.Result):
                self._on_result(gen, msg)
            elif isinstance(msg, m.Progress):
                self._on_progress(msg)
            elif isinstance(msg, m.Hello):
                self.context_on = (f"{msg.kind}:{msg.current_device} {msg.name} ({msg.uuid})" if msg.kind == "cuda"
                                   else msg.kind)
                try:
                    verify_placement(self.name, self.device, msg, self._env)
                except DeviceError as exc:
                    self._start_error = exc
                    self._started.set()
            elif isinstance(msg, m.Ready):
                self._started.set()
            elif isinstance(msg, m.SetupFailed):
                e = msg.error
                self._start_error = WorkerError(f"{self.name} failed in setup: {e.type}: {e.message}")
                self._start_error.__cause__ = RemoteTraceback(e.traceback)
                self._started.set()

    def _on_progress(self, msg: m.Progress) -> None:
        with self._lock:
            sent = self._inflight.get(msg.id)
        if sent is None:
            return
        reqs = sent.reqs if msg.index is None else sent.reqs[msg.index:msg.index + 1]
        for r in reqs:
            cb = getattr(r.future, "progress", None)
            if cb is not None and not r.future.done():
                try:
                    self._executor.submit(_call_progress, cb, msg.value)  # a slow callback blocks nobody
                except RuntimeError:
                    return  # the pool is shutting down

    def _on_result(self, gen: int, msg: m.Result) -> None:
        now = time.monotonic()
        if msg.segments:
            self._send(m.Free(msg.segments))
        if msg.dropped:
            self._attach.drop(msg.dropped)
        with self._lock:
            if gen != self._gen:
                return
            if msg.error is not None and msg.error.kind == "sticky":
                self._death_note = f"hit a sticky CUDA error ({msg.error.type}: {msg.error.message}); recycled"
                return  # the child exits; the batch is retried elsewhere like any crash
            sent = self._inflight.pop(msg.id, None)
            nxt = min(self._inflight.items(), default=None)
            if nxt is not None:
                nxt[1].t_start = now  # the child starts on the next batch now
            self._lock.notify_all()
        if self._holding:
            self.batcher.wake()  # the feeder holds a partial batch until the child has room: it has now
        if sent is None:
            return
        if sent.seg is not None:
            with self._seg_lock:
                self._pool.release(sent.seg)
        if self.breaker.success():
            log.info("%s: circuit closed", self.name)
            self._on_state()
        if msg.oom_batch:
            with self.stats.lock:
                self.stats.oom_events += 1
            self.max_batch = max(1, min(self.max_batch, msg.oom_batch // 2))
        reqs = sent.reqs
        if msg.error is not None:
            self._fail(reqs, _item_error(self.name, msg.error))
            return
        busy = msg.timings.get("predict", 0.0)
        n = len(reqs)
        self.stats.record_batch(n, busy)
        with self.stats.lock:
            for name, seconds in msg.timings.items():
                self.stats.stage(name).add(seconds)
            self.stats.stage("ipc").add(max(0.0, now - sent.t_start - sum(
                v * (n if k in ("preprocess", "postprocess") else 1) for k, v in msg.timings.items()
                if k in ("preprocess", "predict", "postprocess"))))
        per_item = busy / n if n else 0.0
        self.item_time = per_item if not self.item_time else (1 - _EWMA) * self.item_time + _EWMA * per_item
        ok = []
        for i, r in enumerate(reqs):
            if i in msg.errors:
                self._fail([r], _item_error(self.name, msg.errors[i]))
            else:
                ok.append((r, msg.outputs[i]))
        self._resolve(ok, now)

    def _resolve(self, pairs: list[tuple[Request, Any]], now: float) -> None:
        with self._resolve_lock:  # the reader and supervisor threads may finish the same items
            resolve_items(self, pairs, now)

    def _fail(self, reqs: list[Request], err: GpufleetError, cause: BaseException | None = None) -> None:
        with self._resolve_lock:
            fail_items(self, reqs, err, cause if cause is not None else err.__cause__)

    def _fail_sent(self, inflight: list[Sent], err: GpufleetError) -> None:
        for sent in inflight:
            self._fail(sent.reqs, err)

    def _fail_inflight(self, err: GpufleetError) -> None:
        with self._lock:
            inflight = list(self._inflight.values())
            self._inflight = {}
        self._fail_sent(inflight, err)

    def fail_pending(self, err: GpufleetError) -> None:
        self._fail(self.batcher.drain(), err)

    # -- feeder -------------------------------------------------------------------------------------------
    def _feed(self) -> None:
        # +1: one batch waits, encoded, in the pipe (CPU, a sleeping stand-in for a 4.2 ms/64-item GPU and
        # 150 KB items: 10,290 -> 14,675 items/s for one process worker; the ideal is 15,238). pipeline_depth
        # 3 or 4 (4 or 5 sent) made no clear difference on 2x H200 (W2: 26.6-27.7k items/s either way).
        # That extra batch goes only when it is full: a partial one keeps filling until the child is down to
        # pipeline_depth batches, so under a backlog of small requests the batches grow (fewer, bigger batches:
        # less per-batch work in the child, shorter queues) instead of being cut each time a slot frees.
        launched = max(1, self.config.pipeline_depth)
        depth = launched + 1

        def child_has_room() -> bool:
            return len(self._inflight) < launched or self._stopping

        while True:
            with self._lock:
                while not self._stopping and not (self._up and len(self._inflight) < depth):
                    if self.batcher.closed and not len(self.batcher):
                        return  # closing without drain: nothing left to send
                    self._lock.wait(0.2)
                if self._stopping:
                    return
                extra = len(self._inflight) >= launched
            if extra and len(self.batcher) < self.max_batch:
                self._holding = True
                try:
                    if not self.batcher.wait_full(self.max_batch, child_has_room, 0.2):
                        continue  # nothing changed: look again (the child may have died meanwhile)
                finally:
                    self._holding = False
            batch = self.batcher.take(self.max_batch, idle_timeout=0.2)
            if batch is None:
                return
            batch = self._admit(batch)
            suspects = [r for r in batch if attempts(r)]
            rest = [r for r in batch if not attempts(r)]
            pre = [r for r in rest if r.preprocessed]  # the child skips preprocess for a preprocessed batch
            raw = [r for r in rest if not r.preprocessed] if pre else rest
            for group in [*([r] for r in suspects), *(g for g in (pre, raw) if g)]:
                self._submit_batch(group)

    def _admit(self, batch: list[Request]) -> list[Request]:
        now = time.monotonic()
        keep, late = [], []
        qwait = self.stats.stage("queue_wait")
        for r in batch:
            if not r.future.running() and not r.future.set_running_or_notify_cancel():
                continue  # cancelled: its slot is already free
            if r.deadline is not None and now > r.deadline:
                late.append(r)
            else:
                keep.append(r)
                qwait.add(now - r.t_enqueue)
        for r in late:
            self._fail([r], DeadlineExceeded(f"deadline passed after {now - r.t_submit:.3f}s in queue"))
        return keep

    def _submit_batch(self, reqs: list[Request]) -> None:
        items = [r.item for r in reqs]
        block, need = self._codec.stack(items)  # one block: one copy to the GPU in the child, no per-item work
        prepared: list = []
        if block is None:
            prepared, need = self._codec.prepare(items)
        with self._seg_lock:
            seg = self._pool.acquire(need) if need else None
            dropped, self._pool.dropped = self._pool.dropped, []
        bid = next(self._ids)
        try:
            data = self._codec.encode(m.Batch(bid, prepared, stacked=block, dropped=dropped,
                                              preprocessed=reqs[0].preprocessed), seg)
        except Exception as exc:  # noqa: BLE001 - an item neither msgpack nor pickle can carry
            with self._seg_lock:
                self._pool.dropped[:0] = dropped  # told with the next batch instead
                if seg is not None:
                    self._pool.release(seg.name)
            if len(reqs) > 1:
                for r in reqs:
                    self._submit_batch([r])
            else:
                err = InputError(f"cannot send the item to the worker process: {type(exc).__name__}: {exc}")
                err.__cause__ = exc
                self._fail(reqs, err)
            return
        sent = Sent(reqs, None if seg is None else seg.name)
        with self._lock:
            if not self._up:
                self.batcher.put_many(reqs)  # the child died meanwhile; the restart serves them
                if seg is not None:
                    with self._seg_lock:
                        self._pool.release(seg.name)
                return
            if not self._inflight:
                sent.t_start = time.monotonic()
            self._inflight[bid] = sent
            conn = self._conn
        try:
            with self._send_lock:
                conn.send_bytes(data)
            sent.sent = True
        except (OSError, ValueError):
            pass  # the child died; the supervisor moves the batch

    def _send(self, msg: Any) -> None:
        try:
            with self._send_lock:
                self._conn.send_bytes(self._plain.encode(msg))
        except (OSError, ValueError):
            pass


def _call_progress(cb: Callable[[Any], None], value: Any) -> None:
    try:
        cb(value)
    except Exception:  # noqa: BLE001 - a user's callback must not break serving
        log.exception("progress callback failed")


def _item_error(worker: str, e: m.ErrorInfo) -> GpufleetError:
    if e.kind == "input":
        err: GpufleetError = InputError(f"preprocess failed: {e.type}: {e.message}")
    elif e.kind == "post":
        err = WorkerError(f"{worker}: postprocess failed: {e.type}: {e.message}")
    elif e.kind == "model":
        err = WorkerError(f"{worker}: predict failed: {e.type}: {e.message}")
    else:  # a gpufleet error the model raised on purpose keeps its class
        cls = getattr(_errors, e.kind, None)
        if isinstance(cls, type) and issubclass(cls, GpufleetError) and cls is not GpufleetError:
            err = cls(e.message)
        else:
            err = WorkerError(f"{worker}: {e.message}")
    if e.traceback:
        err.__cause__ = RemoteTraceback(e.traceback)
    return err
