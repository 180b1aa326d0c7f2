"""The model copy inside a Ray actor: set up on the GPU Ray gave the actor, then one batch per call.

An actor runs :class:`gpufleet.engine.step.BatchStep` like a thread worker or a process child: the same
preprocess, predict (launch/collect), out-of-memory split, output check and postprocess, and the same errors,
returned to the pool as :class:`gpufleet.engine.wire.BatchDone`. A sticky CUDA error ends the actor's process
(every later kernel in that context would fail); the pool then recreates the actor.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from gpufleet.devices.device import Device
from gpufleet.engine import wire
from gpufleet.engine.process.child import STICKY_EXIT, is_sticky_cuda_error
from gpufleet.engine.process.placement import GPU_CHILD_THREADS
from gpufleet.engine.step import BatchStep
from gpufleet.errors import GpufleetError
from gpufleet.models.base import StackedBatch

__all__ = ["GpuActor"]

log = logging.getLogger(__name__)


class GpuActor:
    """One worker's model copy in a Ray actor (created by :mod:`gpufleet.ray.backend`, not by users)."""

    def __init__(self, name: str, model_blob: bytes, batch_buckets: tuple[int, ...] | None,
                 max_batch_size: int, use_gpu: bool) -> None:
        self.name = name
        self.where: dict[str, Any] = {}
        try:
            self._setup(model_blob, batch_buckets, max_batch_size, use_gpu)
        except BaseException as exc:  # noqa: BLE001 - reported by placement(), so the pool sees the model's error
            self.where = {"error": wire.error_info(exc, with_traceback=True)}

    def _setup(self, model_blob: bytes, batch_buckets: tuple[int, ...] | None, max_batch_size: int,
               use_gpu: bool) -> None:
        import ray

        from gpufleet.engine.process.placement import load_model_blob
        from gpufleet.models.base import apply_pool_settings
        from gpufleet.models.resolve import model_factory

        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        cuda = False
        if use_gpu and gpu_ids:
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
        model.setup(self.device)
        self.step = BatchStep(model, self.device, self.name)
        ctx = ray.get_runtime_context()
        self.where = {"node": ctx.get_node_id(), "hostname": socket.gethostname(), "pid": os.getpid(),
                      "ray_gpu_ids": ",".join(gpu_ids), "context_on": f"cuda:0 {gpu_name}" if cuda else "cpu"}

    def placement(self) -> dict[str, Any]:
        """Where this copy runs: node id, hostname, pid, Ray's GPU ids and the CUDA device; or ``error``: why its
        setup failed."""
        return self.where

    def run(self, items: list, stacked: tuple[Any, str] | None, preprocessed: bool) -> wire.BatchDone:
        """Serve one batch (``items``, or the rows of ``stacked``: an array and the torch dtype name its rows
        were sent as) and answer it as a whole."""
        step = self.step
        if stacked is None:
            batch = items
        else:
            block, torch_name = stacked
            batch = StackedBatch(wire.as_tensor(block, torch_name) if torch_name else block)
        timings: dict[str, float] = {}
        alive, errors = step.begin(batch, preprocessed, timings)
        t0 = time.monotonic()
        try:
            handle = step.launch(step.alive_items(batch, alive)) if step.pipelined and alive else None
            outputs, media = step.complete(batch, alive, errors, handle, t0, timings)
        except GpufleetError as err:
            cause = err.__cause__ if err.__cause__ is not None else err
            if is_sticky_cuda_error(cause):
                log.error("%s: sticky CUDA error, the actor exits: %s", self.name, err)
                os._exit(STICKY_EXIT)  # the pool sees the actor die, requeues the batch and recreates it
            return wire.BatchDone(0, error=wire.error_info(err, with_traceback=True), oom_batch=step.oom_batch)
        infos = {i: wire.error_info(e, with_traceback=True) for i, e in errors.items()}
        return wire.BatchDone(0, outputs, infos, None, timings, step.oom_batch, media, step.isolated)
