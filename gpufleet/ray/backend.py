"""``backend="ray"``: one :class:`~gpufleet.ray.actor.GpuActor` per GPU of a Ray cluster, as pool workers.

Each :class:`RayWorker` has the pool's usual batcher; its *feeder* thread sends each batch to its actor in one
remote call and keeps up to ``pipeline_depth + 1`` calls in flight. How the batch travels depends on where the
actor runs. On the pool's own host (the actor could map a segment the pool wrote: :meth:`GpuActor.attach`), as a
process worker's batches do: written once into one of the worker's shared-memory segments
(:mod:`gpufleet.engine.process.shm`, arrays of one shape and dtype as one ``[n, *shape]`` block, ``bytes`` items
too), the call carrying only a small frame of offsets; the segment is reused once the call is answered. Elsewhere
(another node, or ``SHARED_MEMORY = False``), through Ray's object store: arrays of one shape and dtype as one
``[n, *shape]`` array, read without a copy by the actor, other items pickled by Ray. (CPU, a batch of 128
float16 224x224x3 images, 38.5 MB: 4.6 ms through a segment against 40-75 ms through ``ray.put``.) The threaded actor
launches the next batch before it collects the previous one and has one more queued, so the device never
waits for Ray's round trip; its *collector* thread answers the items as calls finish. An actor that dies (killed,
crashed, its node lost) is recreated by the worker's *supervisor* after the same backoff as a process worker,
on its node while that node lives, elsewhere in the cluster otherwise; its unanswered items are requeued
(:meth:`~gpufleet.engine.worker.BaseWorker.after_death`), none lost, none answered twice.

The pool's front ends, batchers and balancer stay in this process: Ray only places and runs the model copies.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from typing import Any

import numpy as np

from gpufleet.config import PoolConfig
from gpufleet.devices.device import Device
from gpufleet.engine import wire
from gpufleet.engine.backend import Fleet, WorkerHooks
from gpufleet.engine.process.placement import model_blob
from gpufleet.engine.process.shm import SegmentPool, encode_batch, unlink_prefix
from gpufleet.engine.request import Request
from gpufleet.engine.worker import RestartingWorker
from gpufleet.errors import ConfigError, DeviceError, InputError, PoolClosed, WorkerError
from gpufleet.models.resolve import model_factory
from gpufleet.ray.actor import GpuActor
from gpufleet.ray.cluster import RayNode, connect, gpu_nodes

__all__ = ["SHARED_MEMORY", "RayWorker", "make_fleet"]

log = logging.getLogger(__name__)

SHARED_MEMORY = True
"""Send batches to actors on the pool's host through shared memory (False: every batch through Ray's object
store, as to another node)."""
_BYTES_MIN = 256  # bytes items from this size go into the segment: a batch of JPEGs leaves the call small


def make_fleet(model: Any, config: PoolConfig, hooks: WorkerHooks) -> Fleet:
    """Connect to the cluster and make ``workers_per_device`` actors per GPU on every chosen node (or, on a
    cluster without GPUs, ``cpu_devices`` CPU actors)."""
    if config.max_batch_size == 0:
        raise ConfigError("max_batch_size=0 (probe) is not supported with backend='ray'; give a size")
    ray = connect(config.ray_address)
    blob = model_blob(model)
    make_model = model_factory(model)
    actor_cls = ray.remote(GpuActor)
    prefix = f"gpufleet_{os.getpid():x}{secrets.token_hex(2)}_r"  # this pool's shared-memory segments
    placed: dict[str, int] = {}  # node id -> GPUs given a worker so far

    def build(first_index: int, first_device: int) -> tuple[list[Device], list[Any]]:
        """Devices (and workers) for the GPUs not yet placed on the chosen nodes."""
        slots: list[tuple[RayNode | None, int]] = []
        for n in gpu_nodes(ray, config.ray_nodes):
            have = placed.get(n.node_id, 0)
            slots += [(n, g) for g in range(have, int(n.gpus))]
            placed[n.node_id] = max(have, int(n.gpus))
        use_gpu = bool(slots) or any(placed.values())
        if not slots and not use_gpu and first_index == 0:
            if not config.cpu_devices:
                raise DeviceError("the Ray cluster has no GPU (ray status lists its resources); start nodes with "
                                  "GPUs, or give cpu_devices=N to run N CPU actors")
            slots = [(None, i) for i in range(config.cpu_devices)]
        devices = [Device(index=first_device + i, kind="ray", name=_device_name(node, gpu))
                   for i, (node, gpu) in enumerate(slots)]
        workers: list[Any] = []
        for _ in range(config.workers_per_device):
            for dev, (node, _gpu) in zip(devices, slots):
                workers.append(RayWorker(index=first_index + len(workers), device=dev, config=config, hooks=hooks,
                                         ray=ray, actor_cls=actor_cls, blob=blob, make_model=make_model,
                                         node=node, use_gpu=node is not None,
                                         prefix=f"{prefix}{first_index + len(workers)}_"))
        return devices, workers

    devices, workers = build(0, 0)
    counted = [len(devices)]

    def grow(n_workers: int) -> tuple[list[Device], list[Any]]:
        new_devices, new_workers = build(n_workers, counted[0])
        counted[0] += len(new_devices)
        return new_devices, new_workers

    return Fleet(devices, workers, grow=grow)


def _device_name(node: RayNode | None, gpu: int) -> str:
    if node is None:
        return "CPU actor"
    return f"{node.gpu_type or 'GPU'} #{gpu} on {node.hostname or node.address}"


class RayWorker(RestartingWorker):
    """One worker whose model copy is a Ray actor. Created by :func:`make_fleet`, driven by the pool."""

    backend = "ray"

    def __init__(self, *, index: int, device: Device, config: PoolConfig, hooks: WorkerHooks, ray: Any,
                 actor_cls: Any, blob: bytes, make_model: Any, node: RayNode | None, use_gpu: bool,
                 prefix: str) -> None:
        super().__init__(index=index, device=device, config=config, hooks=hooks, make_model=make_model)
        self._ray = ray
        self._actor_cls = actor_cls
        self._blob = blob
        self._node = node
        self._use_gpu = use_gpu
        self._actor: Any = None
        self._where: dict[str, Any] = {}
        self._cv = threading.Condition()
        self._up = False
        self._stopping = False
        self._inflight: dict[Any, list[Request]] = {}  # call ref -> its items, in the order sent
        self._dead: BaseException | None = None  # set by the collector when the actor died
        self._sent_at: dict[Any, float] = {}  # call ref -> when it was sent
        self._holding = False  # the feeder waits for a full batch or room in the actor
        self._seq = 0  # the next call's number at the current actor (it serves them in that order)
        # shared memory for an actor on this host: the segments (kept across actors), the codec that writes
        # batches into them, whether the current actor reads them, and the segment of each call in flight
        self._prefix = prefix
        self._segments = SegmentPool(prefix)
        self._codec = wire.Codec(wire.ChildMessage, segments=self._segments, bytes_min=_BYTES_MIN)
        self._seg_lock = threading.Lock()
        self._shared = False
        self._seg_of: dict[Any, str] = {}
        self._supervisor = threading.Thread(target=self._supervise, name=f"gpufleet-{self.name}-sup", daemon=True)
        self._feeder = threading.Thread(target=self._feed, name=f"gpufleet-{self.name}-feed", daemon=True)
        self._collector = threading.Thread(target=self._collect, name=f"gpufleet-{self.name}-collect", daemon=True)

    # -- what the pool reads ------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self._up and self.breaker.allows_traffic

    def placement(self) -> dict[str, Any]:
        return dict(self._where)

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._supervisor.start()

    def join(self, timeout: float | None = None) -> None:
        """Stop once the batcher is drained and every call answered; then the actor goes."""
        end = None if timeout is None else time.monotonic() + timeout
        self.batcher.close()
        for t in (self._feeder, self._collector):
            if t.is_alive():
                t.join(None if end is None else max(0.1, end - time.monotonic()))
        self._stop.set()
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._supervisor.is_alive():
            self._supervisor.join(None if end is None else max(0.1, end - time.monotonic()))
        self._kill_actor()
        with self._cv:
            left, self._inflight = list(self._inflight.values()), {}
            self._sent_at.clear()
            self._seg_of.clear()
        with self._seg_lock:
            self._segments.close()
        unlink_prefix(self._prefix)
        for reqs in left:
            self.fail(reqs, PoolClosed("the pool closed before the item was served"))

    def _kill_actor(self) -> None:
        actor, self._actor = self._actor, None
        if actor is not None:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    # -- supervisor ---------------------------------------------------------------------------------------
    restart_what = "recreating the actor"

    def _first_up(self) -> None:
        self._feeder.start()
        self._collector.start()

    def _serve_until_down(self) -> None:
        with self._cv:  # until the collector sees the actor die, or the pool closes
            while self._dead is None and not self._stopping:
                self._cv.wait(0.5)
                if self.breaker.poll():
                    log.info("%s: circuit half-open, probing", self.name)
                    self.hooks.state()
            dead, self._dead = self._dead, None
        if dead is not None:
            self._on_death(dead)

    def _launch(self) -> bool:
        """Create the actor (on its node while that node lives) and wait for its setup; False with ``error``."""
        ray = self._ray
        # threaded: Ray receives the next calls and returns finished ones while the model thread serves a batch
        # (one thread per call the feeder keeps in flight, one more for placement())
        options: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0,
                                   "max_concurrency": max(1, self.config.pipeline_depth) + 2}
        if self._use_gpu:
            options["num_gpus"] = 1.0 / self.config.workers_per_device
        node = self._node
        if node is not None and node.node_id in {n.node_id for n in gpu_nodes(ray)}:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            # soft: if the node cannot take it now, the actor goes wherever a GPU is free
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node.node_id, soft=True)
        actor = None
        try:
            actor = self._actor_cls.options(**options).remote(
                self.name, self._blob, self.config.batch_buckets, self.config.max_batch_size, self._use_gpu)
            where = ray.get(actor.placement.remote(), timeout=self.config.start_timeout_s)
        except Exception as exc:  # noqa: BLE001 - no resources, or Ray failed: the pool decides
            self.error = WorkerError(f"cannot create the actor: {_ray_error_text(exc)}")
            self.error.__cause__ = exc
            where = {}
        if "error" in where:  # the model's setup raised: its own error, with the actor's traceback
            self.error = wire.error_from(where["error"])
        if self.error is not None and not where.get("node"):
            log.error("%s failed in setup: %s", self.name, self.error)
            if actor is not None:  # e.g. still waiting for a GPU after start_timeout_s
                self._actor = actor
                self._kill_actor()
            return False
        shared = SHARED_MEMORY and self._attach(actor)
        where["batches_via"] = "shared memory" if shared else "object store"
        self._actor, self._where, self.error = actor, where, None
        with self._cv:
            self._shared = shared
            self._seq = 0  # a new actor numbers its calls from 0
            self._up = True
            self._cv.notify_all()
        self.hooks.state()
        log.info("%s: actor ready on node %s (%s, pid %s, %s)", self.name, where.get("node", "?")[:12],
                 where.get("hostname"), where.get("pid"), where.get("context_on"))
        return True

    def _attach(self, actor: Any) -> bool:
        """Whether ``actor`` reads this worker's shared memory: it maps a segment and finds what we wrote there
        (same host and ``/dev/shm``; not across nodes, nor from another container or a ``ray://`` client)."""
        token = secrets.token_bytes(16)
        with self._seg_lock:
            seg = self._segments.acquire(len(token))
            assert seg.buf is not None
            seg.buf[:len(token)] = token
        try:
            return bool(self._ray.get(actor.attach.remote(seg.name, token), timeout=self.config.start_timeout_s))
        except Exception as exc:  # noqa: BLE001 - then the object store carries the batches
            log.info("%s: the actor cannot read shared memory (%s); batches go through Ray's object store",
                     self.name, _ray_error_text(exc))
            return False
        finally:
            with self._seg_lock:
                self._segments.release(seg.name)

    def _release(self, refs: list[Any]) -> None:
        """The segments of these calls (answered, or their actor gone) are free again (under ``_cv``)."""
        names = [n for n in (self._seg_of.pop(r, None) for r in refs) if n is not None]
        if names:
            with self._seg_lock:
                for name in names:
                    self._segments.release(name)

    def _on_death(self, exc: BaseException) -> None:
        with self._cv:
            self._up = False
            self._shared = False
            inflight, self._inflight = list(self._inflight.values()), {}
            self._sent_at.clear()
            self._cv.notify_all()
        self.hooks.state()
        self._kill_actor()
        with self._cv:  # the actor is gone: nothing reads its calls' segments now (requeued items are rewritten)
            self._release(list(self._seg_of))
        reason = f"actor died ({_ray_error_text(exc)})"
        self.breaker.failure(reason)
        log.warning("%s: %s", self.name, reason)
        self.after_death(inflight, reason)

    # -- feeder and collector -----------------------------------------------------------------------------
    def _feed(self) -> None:
        """The feeder thread: batches to the actor as a process worker's feeder sends them to its child (see
        :meth:`~gpufleet.engine.worker.RestartingWorker.feed`; the extra call waits queued in the actor)."""

        def hold(on: bool) -> None:
            self._holding = on

        self.feed(self._cv, in_flight=lambda: len(self._inflight), up=lambda: self._up,
                  stopping=lambda: self._stopping, holding=hold, send=self._send)

    def _send(self, reqs: list[Request]) -> None:
        with self._cv:
            actor, shared = self._actor, self._shared
        if shared:
            self._send_shared(reqs, actor)
            return
        items = [r.item for r in reqs]
        stacked = _stack(items)
        with self._cv:
            if not self._up or self._actor is None:
                self.batcher.put_many(reqs)  # the actor died meanwhile; the next one serves them
                return
            actor = self._actor
            try:
                ref = actor.run.remote(self._seq, None if stacked is not None else items, stacked,
                                       reqs[0].preprocessed)
                self._seq += 1
                # (a batch of tensors goes as one array: pickling each tensor cost ~4x the throughput on one H200)
            except Exception as exc:  # noqa: BLE001 - an item Ray cannot serialize
                if len(reqs) > 1:
                    for r in reqs:
                        self._send([r])
                    return
                self.fail(reqs, _call_error(exc))
                return
            self._track(ref, reqs)

    def _send_shared(self, reqs: list[Request], actor: Any) -> None:
        """``reqs`` written into one segment, and a call carrying the frame that points into it."""
        try:
            frame, seg, dropped = encode_batch(self._codec, self._segments, self._seg_lock, [r.item for r in reqs],
                                               bid=0, preprocessed=reqs[0].preprocessed)
        except Exception as exc:  # noqa: BLE001 - an item neither msgpack nor pickle can carry
            if len(reqs) > 1:
                for r in reqs:
                    self._send([r])
            else:
                err = InputError(f"cannot send the item to the actor: {type(exc).__name__}: {exc}")
                err.__cause__ = exc
                self.fail(reqs, err)
            return
        with self._cv:
            if not self._up or self._actor is not actor:
                # the actor died meanwhile; the next one serves them (the dropped names go with the next batch)
                with self._seg_lock:
                    self._segments.dropped[:0] = dropped
                    if seg is not None:
                        self._segments.release(seg)
                self.batcher.put_many(reqs)
                return
            ref = actor.run_shared.remote(self._seq, frame)
            self._seq += 1
            if seg is not None:
                self._seg_of[ref] = seg
            self._track(ref, reqs)

    def _track(self, ref: Any, reqs: list[Request]) -> None:
        """A call sent (under ``_cv``): the collector answers its items."""
        self._inflight[ref] = reqs
        self._sent_at[ref] = time.monotonic()
        self._cv.notify_all()

    def _collect(self) -> None:
        ray = self._ray
        while True:
            with self._cv:
                while not self._inflight or self._dead is not None:
                    if self._stopping or (self.batcher.closed and not len(self.batcher)
                                          and not self._feeder.is_alive() and not self._inflight):
                        return
                    self._cv.wait(0.2)
                refs = list(self._inflight)
            done, _ = ray.wait(refs, num_returns=1, timeout=0.5)
            for ref in done:
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the actor died (or the call could not run)
                    if _actor_died(exc):
                        with self._cv:
                            if ref in self._inflight and self._dead is None:
                                self._dead = exc  # the supervisor requeues every unanswered batch
                                self._up = False
                            self._cv.notify_all()
                        break
                    with self._cv:
                        reqs = self._inflight.pop(ref, None)
                        self._sent_at.pop(ref, None)
                        self._release([ref])
                        self._cv.notify_all()
                    if reqs is not None:
                        self.fail(reqs, _call_error(exc))
                    continue
                with self._cv:
                    reqs = self._inflight.pop(ref, None)
                    sent = self._sent_at.pop(ref, 0.0)
                    self._release([ref])
                    self._cv.notify_all()
                if self._holding:
                    self.batcher.wake()  # the feeder holds a partial batch until the actor has room: it has now
                if reqs is not None:
                    self._answer(reqs, result, sent)

    def _answer(self, reqs: list[Request], msg: wire.BatchDone, sent: float) -> None:
        now = time.monotonic()
        if self.breaker.success():
            log.info("%s: circuit closed", self.name)
            self.hooks.state()
        timings = dict(msg.timings)
        n = len(reqs)
        # the call's time not spent serving the batch: Ray's round trip and waiting behind earlier batches
        timings["ipc"] = max(0.0, now - sent - sum(
            v * (n if k in ("preprocess", "postprocess") else 1) for k, v in msg.timings.items()
            if k in ("preprocess", "predict", "postprocess")))
        self.answer(reqs, msg, timings, now)


def _stack(items: list) -> tuple[np.ndarray, str] | None:
    """Arrays (or CPU tensors) of one shape and dtype as one ``[n, *shape]`` array, one buffer in Ray's object
    store that the actor reads in place, and the torch dtype name to view it back as ("" for arrays)."""
    rows = wire.stackable(items)
    return None if rows is None else (np.stack(rows[0]), rows[1])


def _actor_died(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name in ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError",
                    "NodeDiedError", "OwnerDiedError", "ActorUnschedulableError")


def _ray_error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _call_error(exc: BaseException) -> WorkerError:
    err = WorkerError(f"the Ray call failed: {_ray_error_text(exc)}")
    err.__cause__ = exc
    return err
