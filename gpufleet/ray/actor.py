"""The model copy inside a Ray actor: set up on the GPU Ray gave the actor, then one batch per call.

An actor runs :class:`gpufleet.engine.step.BatchStep` like a thread worker or a process child: the same
preprocess, predict (launch/collect), out-of-memory split, output check and postprocess, and the same errors,
returned to the pool as :class:`gpufleet.engine.wire.BatchDone`. A sticky CUDA error ends the actor's process
(every later kernel in that context would fail); the pool then recreates the actor.

The actor is threaded (``max_concurrency``): Ray receives the next calls and returns the finished ones on its
own threads while one *model thread* runs every model call, in the order the pool sent them — as a process
child does: for models with ``launch``/``collect`` it launches the next batch before it collects the previous
one, so the device never waits for Ray's round trip; for the others, Ray's work on the calls around a batch
overlaps its ``predict``.

Batches come one of two ways (the pool chooses per actor, see :mod:`gpufleet.ray.backend`): on the pool's own
host, a :class:`~gpufleet.engine.wire.Batch` frame whose arrays and bytes lie in the pool's shared-memory segments
(:meth:`GpuActor.run_shared`; the actor maps each segment once and, on a GPU, pins it, so a stacked batch is
copied to the device straight from it); elsewhere, the items or one stacked array through Ray's object store
(:meth:`GpuActor.run`). Answers go back as Ray return values either way.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from gpufleet.devices import nvml
from gpufleet.devices.device import Device
from gpufleet.devices.discovery import cuda_env_defaults
from gpufleet.engine import wire
from gpufleet.engine.process.child import STICKY_EXIT, HostPins, is_sticky_cuda_error
from gpufleet.engine.process.placement import GPU_CHILD_THREADS
from gpufleet.engine.process.shm import Attachments, SegmentPool
from gpufleet.engine.step import BatchStep, poll_interval
from gpufleet.errors import GpufleetError
from gpufleet.models.base import StackedBatch, setup_model

__all__ = ["GpuActor"]

log = logging.getLogger(__name__)


class GpuActor:
    """One worker's model copy in a Ray actor (created by :mod:`gpufleet.ray.backend`, not by users)."""

    def __init__(self, name: str, model_blob: bytes, batch_buckets: tuple[int, ...] | None,
                 max_batch_size: int, use_gpu: bool) -> None:
        self.name = name
        self.where: dict[str, Any] = {}
        # calls received, not yet begun by the model thread, by their sequence number: Ray's threads may hand
        # them over in another order than they were sent, and the pool counts a death against the oldest
        self._inbox: dict[int, _Call] = {}
        self._expect = 0  # the sequence number the model thread serves next
        self._cv = threading.Condition()
        self._codec: wire.Codec | None = None  # reads frames of run_shared; made by attach()
        self._codec_lock = threading.Lock()  # Ray's threads decode calls side by side; the mappings are shared
        try:
            self._setup(model_blob, batch_buckets, max_batch_size, use_gpu)
        except BaseException as exc:  # noqa: BLE001 - reported by placement(), so the pool sees the model's error
            self.where = {"error": wire.error_info(exc, with_traceback=True)}
            return
        threading.Thread(target=self._serve, name=f"gpufleet-{name}-model", daemon=True).start()

    def _setup(self, model_blob: bytes, batch_buckets: tuple[int, ...] | None, max_batch_size: int,
               use_gpu: bool) -> None:
        import ray

        from gpufleet.engine.process.placement import load_model_blob
        from gpufleet.models.base import apply_pool_settings
        from gpufleet.models.resolve import model_factory

        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        cuda = False
        if use_gpu and gpu_ids and nvml.driver_loaded():  # no torch import on a node without a driver
            cuda_env_defaults()
            import torch

            cuda = torch.cuda.is_available()  # Ray set CUDA_VISIBLE_DEVICES: the actor's GPU is cuda:0
        self.device = Device(index=0, kind="cuda" if cuda else "cpu", name="")
        gpu_name = ""
        if cuda:
            import torch

            torch.cuda.set_device(0)
            gpu_name = torch.cuda.get_device_name(0)
            # Ray gives an actor with num_cpus=0 one OpenMP thread; a GPU worker's host work wants a few, as a
            # process worker gets (GPU_CHILD_THREADS)
            torch.set_num_threads(GPU_CHILD_THREADS)
        model = model_factory(load_model_blob(model_blob))()
        apply_pool_settings(model, batch_buckets=batch_buckets, max_batch_size=max_batch_size)
        setup_model(model, self.device)
        self.step = BatchStep(model, self.device, self.name)
        ctx = ray.get_runtime_context()
        self.where = {"node": ctx.get_node_id(), "hostname": socket.gethostname(), "pid": os.getpid(),
                      "ray_gpu_ids": ",".join(gpu_ids), "context_on": f"cuda:0 {gpu_name}" if cuda else "cpu"}

    def placement(self) -> dict[str, Any]:
        """Where this copy runs: node id, hostname, pid, Ray's GPU ids and the CUDA device; or ``error``: why its
        setup failed."""
        return self.where

    def attach(self, segment: str, token: bytes) -> bool:
        """Whether this actor sees the pool's shared memory: it maps ``segment`` and finds ``token`` at its start
        (False on another host, or in another container). Then :meth:`run_shared` can read batches from it."""
        with self._codec_lock:
            attachments = self._attachments()
            try:
                seg = attachments.get(segment)
            except OSError:
                return False
            if seg.buf is None or bytes(seg.buf[:len(token)]) != token:
                attachments.drop([segment])
                return False
            if self._codec is None:
                # the pipe hop's codec, reading in place (copy=False); its segment pool stays empty (answers go
                # back through Ray), it only marks the hop whose small odd values may come pickled
                self._codec = wire.Codec(wire.ChildMessage, segments=SegmentPool(f"gpufleet_unused_{os.getpid()}_"),
                                         attachments=attachments, copy=False)
            return True

    def _attachments(self) -> Attachments:
        if self._codec is not None:
            attachments: Attachments = self._codec.attachments
            return attachments
        cuda = getattr(self, "device", None) is not None and self.device.is_cuda
        pins = HostPins() if cuda else None
        return Attachments(pins.register, pins.unregister) if pins is not None else Attachments()

    def run_shared(self, seq: int, frame: bytes) -> wire.BatchDone:
        """Serve one batch sent as a :class:`~gpufleet.engine.wire.Batch` frame whose arrays and bytes lie in the
        pool's shared memory (read in place, valid until this call returns); as :meth:`run` otherwise. The
        frame's ``dropped`` segments were unlinked by the pool: their mappings go first."""
        assert self._codec is not None, "run_shared before attach"
        with self._codec_lock:
            msg = self._codec.decode(frame)
            if msg.dropped:
                self._codec.attachments.drop(msg.dropped)
        batch = msg.items if msg.stacked is None else StackedBatch(msg.stacked)
        preprocessed = msg.preprocessed
        del msg  # the call holds the only reference to the batch's views into the segment
        return self._serve_call(seq, batch, preprocessed)

    def run(self, seq: int, items: list, stacked: tuple[Any, str] | None, preprocessed: bool) -> wire.BatchDone:
        """Serve one batch (``items``, or the rows of ``stacked``: an array and the torch dtype name its rows
        were sent as) and answer it as a whole; ``seq`` numbers the calls to this actor from 0, and the model
        serves them in that order. Runs on one of Ray's threads, which waits while the model
        thread serves the batch."""
        if stacked is None:
            batch: Any = items
        else:
            block, torch_name = stacked
            batch = StackedBatch(wire.as_tensor(block, torch_name) if torch_name else block)
        return self._serve_call(seq, batch, preprocessed)

    def _serve_call(self, seq: int, batch: Any, preprocessed: bool) -> wire.BatchDone:
        call = _Call(batch, preprocessed)
        del batch
        with self._cv:
            self._inbox[seq] = call
            self._cv.notify_all()
        call.answered.wait()
        assert call.result is not None
        return call.result

    # -- the model thread ---------------------------------------------------------------------------------
    def _take(self) -> _Call:
        """The next call in sequence (under ``_cv``; it has arrived)."""
        call = self._inbox.pop(self._expect)
        self._expect += 1
        return call

    def _serve(self) -> None:
        """Serve the calls in the order they came; with launch/collect, the next batch is launched before the
        previous one is collected (two batches on the device), as in a process child."""
        pipelined = self.step.pipelined
        pending: _Call | None = None
        while True:
            call = self._next(pending)
            if call is None:  # the device finished pending and nothing else came: answer it now
                assert pending is not None
                self._finish(pending)
                pending = None
                continue
            began = self._begin(call)
            if pending is not None:
                self._finish(pending)
                pending = None
            if began:
                if pipelined:
                    pending = call
                else:
                    self._finish(call)

    def _next(self, pending: _Call | None) -> _Call | None:
        """The next call: waited for when nothing is pending; while ``pending`` runs on the device, the next one
        as soon as it comes, or None once the device has finished ``pending`` first (at once for models
        without ``ready``)."""
        ready = self.step.ready
        with self._cv:
            while True:
                if self._expect in self._inbox:
                    return self._take()
                if pending is None:
                    self._cv.wait()
                    continue
                if ready is None or pending.handle is None:
                    return None
                try:
                    if ready(pending.handle):
                        return self._take() if self._expect in self._inbox else None
                except Exception:  # noqa: BLE001 - collect() reports the batch's error
                    return None
                self._cv.wait(poll_interval(time.monotonic() - pending.t0))

    def _begin(self, call: _Call) -> bool:
        """Preprocess the batch and, for launch/collect models, start it on the device; False if it was answered
        already (its launch failed)."""
        step = self.step
        try:
            call.alive, call.errors = step.begin(call.batch, call.preprocessed, call.timings)
            call.t0 = time.monotonic()
            if step.pipelined and call.alive:
                # None when it ran out of memory: complete() predicts in parts
                call.handle = step.launch(step.alive_items(call.batch, call.alive))
        except BaseException as exc:  # noqa: BLE001 - a GpufleetError from launch, or anything else: the batch's
            self._failed(call, exc)
            return False
        return True

    def _finish(self, call: _Call) -> None:
        """Collect (or run) a begun batch, postprocess it and answer its call."""
        step = self.step
        try:
            outputs, media = step.complete(call.batch, call.alive, call.errors, call.handle, call.t0, call.timings)
        except BaseException as exc:  # noqa: BLE001
            self._failed(call, exc)
            return
        infos = {i: wire.error_info(e, with_traceback=True) for i, e in call.errors.items()}
        call.answer(wire.BatchDone(0, outputs, infos, None, call.timings, step.oom_batch, media, step.isolated))

    def _failed(self, call: _Call, exc: BaseException) -> None:
        """The whole batch failed: answer it with the error; a sticky CUDA error ends the actor."""
        err = exc if isinstance(exc, GpufleetError) else self.step.error(exc)
        cause = err.__cause__ if err.__cause__ is not None else err
        if is_sticky_cuda_error(cause):
            log.error("%s: sticky CUDA error, the actor exits: %s", self.name, err)
            os._exit(STICKY_EXIT)  # the pool sees the actor die, requeues the batch and recreates it
        call.answer(wire.BatchDone(0, error=wire.error_info(err, with_traceback=True), oom_batch=self.step.oom_batch))


class _Call:
    """One ``run`` call: its batch, its state between begin and finish, and its answer."""

    __slots__ = ("batch", "preprocessed", "timings", "alive", "errors", "handle", "t0", "result", "answered")

    def __init__(self, batch: Any, preprocessed: bool) -> None:
        self.batch, self.preprocessed = batch, preprocessed
        self.timings: dict[str, float] = {}
        self.alive: list[int] = []
        self.errors: dict[int, GpufleetError] = {}
        self.handle: Any = None
        self.t0 = 0.0
        self.result: wire.BatchDone | None = None
        self.answered = threading.Event()

    def answer(self, result: wire.BatchDone) -> None:
        self.result = result
        self.batch = self.handle = None  # the batch's memory (a view of Ray's object store) goes with the call
        self.answered.set()
