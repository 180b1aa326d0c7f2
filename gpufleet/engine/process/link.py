"""The data path of a process worker: :class:`ChildLink` owns the pipe to the child, the codec, the
shared-memory segments and the batches in flight, and runs the feeder and reader threads over them.

The feeder keeps one batch more in flight than the child works on at once, so the next batch is already
encoded in shared memory when the child finishes one; the reader copies results out of the child's shared
memory, frees the segment and answers the items through the worker. The worker's supervisor
(:mod:`gpufleet.engine.process.worker`) connects each child generation (:meth:`ChildLink.connect`) and takes
the batches of one that died (:meth:`ChildLink.disconnect`). One of reader and supervisor answers an
in-flight item, exactly once (the worker's answer lock), so the pool's outstanding counts stay right.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any, Protocol

import msgspec

from gpufleet.engine import wire
from gpufleet.engine.process.shm import Attachments, SegmentPool, encode_batch, unlink_prefix
from gpufleet.engine.request import Request
from gpufleet.engine.worker import RestartingWorker
from gpufleet.errors import InputError

__all__ = ["ChildLink", "ChildOwner", "Sent"]

log = logging.getLogger(__name__)


class Sent:
    """A batch sent to the child: its items, the segment that carries their arrays, when the child started it."""

    __slots__ = ("reqs", "seg", "t_start", "sent")

    def __init__(self, reqs: list[Request], seg: str | None) -> None:
        self.reqs, self.seg, self.t_start, self.sent = reqs, seg, 0.0, False


class ChildOwner(Protocol):
    """What the link needs of its worker beyond :class:`~gpufleet.engine.worker.RestartingWorker`."""

    def kill_child(self) -> None: ...

    def on_start_message(self, msg: Any) -> None: ...

    def on_batch_answered(self) -> None: ...


class _Worker(RestartingWorker, ChildOwner):
    """For type checking only: the worker a link serves."""


class ChildLink:
    """One worker's connection to its child process, across the child's generations (see the module docstring).

    ``cv`` guards ``up``, ``stopping``, ``gen`` and ``inflight``; the supervisor waits on it too.
    """

    def __init__(self, worker: Any, prefix: str) -> None:
        self.worker: _Worker = worker  # a ProcessWorker
        self.prefix = prefix
        self.cv = threading.Condition()
        self.up = False  # a child is set up and takes batches
        self.stopping = False
        self.gen = 0
        self.inflight: dict[int, Sent] = {}
        self.last_beat = 0.0  # when the child last said anything
        self.death_note = ""  # why the reader had the child killed, if it did
        self.conn: Any = None
        self._segments = SegmentPool(f"{prefix}p")
        self._attach = Attachments()
        self._codec = wire.Codec(wire.ChildMessage, segments=self._segments, attachments=self._attach, copy=True)
        self._plain = msgspec.msgpack.Encoder()
        self._ids = itertools.count()
        self._send_lock = threading.Lock()
        self._seg_lock = threading.Lock()
        self._holding = False  # the feeder waits for a full batch or room in the child

    # -- generations --------------------------------------------------------------------------------------
    def new_generation(self, at_least: int | None = None) -> int:
        """The next generation number (``at_least``: the one a spare child was spawned for, whose segment
        names carry it)."""
        with self.cv:
            self.gen = max(self.gen + 1, at_least or 0)
            return self.gen

    def connect(self, conn: Any) -> None:
        """The pipe of the generation being started (before its reader runs)."""
        self.conn = conn
        self.last_beat = time.monotonic()

    def set_up(self, up: bool) -> None:
        """The child serves (True) or is gone (False: the feeder stops sending)."""
        with self.cv:
            self.up = up
            self.cv.notify_all()

    def take_inflight(self) -> list[Sent]:
        """Every batch sent and not answered, oldest first; the link forgets them."""
        with self.cv:
            inflight = [s for _, s in sorted(self.inflight.items())]
            self.inflight = {}
        return inflight

    def running(self) -> tuple[Sent | None, list[Request]]:
        """The batch the child works on now (the oldest sent), and every item sent to it."""
        with self.cv:
            oldest = min(self.inflight.items(), default=None)
            reqs = [r for s in self.inflight.values() if s.sent for r in s.reqs]
        return (oldest[1] if oldest is not None else None), reqs

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify_all()

    def close_segments(self, all_generations: bool = False) -> None:
        """Unmap the child's segments and free ours (one generation's, or everything at the end)."""
        self._attach.close()
        with self._seg_lock:
            if all_generations:
                self._segments.close()
            else:
                self._segments.release_all()
        unlink_prefix(f"{self.prefix}g" if all_generations else f"{self.prefix}g{self.gen}c")

    def send(self, msg: Any) -> None:
        """A control message (no arrays); a dead child is ignored (the supervisor sees it)."""
        try:
            with self._send_lock:
                self.conn.send_bytes(self._plain.encode(msg))
        except (OSError, ValueError, AttributeError):
            pass

    # -- reader -------------------------------------------------------------------------------------------
    def read(self, gen: int, conn: Any) -> None:
        """The reader thread of one child generation: until the pipe closes."""
        w = self.worker
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return
            try:
                msg = self._codec.decode(data)
            except Exception:  # noqa: BLE001 - a corrupt frame means a broken child; it will be recycled
                log.exception("%s: undecodable message from the child", w.name)
                self.death_note = "sent an undecodable message; killed"
                w.kill_child()
                return
            self.last_beat = time.monotonic()
            if isinstance(msg, wire.BatchDone):
                self._on_done(gen, msg)
            elif isinstance(msg, wire.Progress):
                self._on_progress(msg)
            elif isinstance(msg, (wire.Hello, wire.Ready, wire.SetupFailed)):
                w.on_start_message(msg)

    def _on_progress(self, msg: wire.Progress) -> None:
        with self.cv:
            sent = self.inflight.get(msg.id)
        if sent is not None:
            self.worker.progress(sent.reqs, msg.value, msg.index)

    def _on_done(self, gen: int, msg: wire.BatchDone) -> None:
        w = self.worker
        now = time.monotonic()
        w.stats.progress = None  # the batch it described is done
        w.stats.idle_s = (w.stats.idle_s or 0.0) + msg.idle_s  # the child's waits with nothing on the device
        if msg.segments:
            self.send(wire.Free(msg.segments))
        if msg.dropped:
            self._attach.drop(msg.dropped)
        with self.cv:
            if gen != self.gen:
                return
            if msg.error is not None and msg.error.sticky:
                self.death_note = f"hit a sticky CUDA error ({msg.error.message}); recycled"
                return  # the child exits; the batch is retried elsewhere like any crash
            sent = self.inflight.pop(msg.id, None)
            nxt = min(self.inflight.items(), default=None)
            if nxt is not None:
                nxt[1].t_start = now  # the child starts on the next batch now
            self.cv.notify_all()
        if self._holding:
            w.batcher.wake()  # the feeder holds a partial batch until the child has room: it has now
        if sent is None:
            return
        if sent.seg is not None:
            with self._seg_lock:
                self._segments.release(sent.seg)
        w.on_batch_answered()
        reqs = sent.reqs
        n = len(reqs)
        timings = dict(msg.timings)
        timings["ipc"] = max(0.0, now - sent.t_start - sum(
            v * (n if k in ("preprocess", "postprocess") else 1) for k, v in msg.timings.items()
            if k in ("preprocess", "predict", "postprocess")))
        w.answer(reqs, msg, timings, now)

    # -- feeder -------------------------------------------------------------------------------------------
    def feed(self) -> None:
        """The feeder thread: batches from the worker's batcher to the child, until the pool closes (see
        :meth:`~gpufleet.engine.worker.RestartingWorker.feed`; the extra batch waits, encoded, in the pipe)."""

        def hold(on: bool) -> None:
            self._holding = on

        self.worker.feed(self.cv, in_flight=lambda: len(self.inflight), up=lambda: self.up,
                         stopping=lambda: self.stopping, holding=hold, send=self._send_batch)

    def _send_batch(self, reqs: list[Request]) -> None:
        w = self.worker
        bid = next(self._ids)
        try:
            data, seg, _ = encode_batch(self._codec, self._segments, self._seg_lock, [r.item for r in reqs], bid=bid,
                                        preprocessed=reqs[0].preprocessed)
        except Exception as exc:  # noqa: BLE001 - an item neither msgpack nor pickle can carry
            if len(reqs) > 1:
                for r in reqs:
                    self._send_batch([r])
            else:
                err = InputError(f"cannot send the item to the worker process: {type(exc).__name__}: {exc}")
                err.__cause__ = exc
                w.fail(reqs, err)
            return
        sent = Sent(reqs, seg)
        with self.cv:
            if not self.up:
                w.batcher.put_many(reqs)  # the child died meanwhile; the restart serves them
                if seg is not None:
                    with self._seg_lock:
                        self._segments.release(seg)
                return
            if not self.inflight:
                sent.t_start = time.monotonic()
            self.inflight[bid] = sent
            conn = self.conn
        try:
            with self._send_lock:
                conn.send_bytes(data)
            sent.sent = True
        except (OSError, ValueError):
            pass  # the child died; the supervisor moves the batch
