"""The process backend: one spawned child per worker, pinned to its GPU, batches through shared memory.

    worker.py     ProcessWorker: the supervisor (start, watch, restart with backoff, requeue, circuit breaker)
    link.py       ChildLink: the pipe, codec, segments and in-flight batches; feeder and reader threads
    child.py      the child process: pin the device, set the model up, run the batch step per batch
    shm.py        shared-memory segments
    placement.py  the model as bytes for the child, the child's environment, the placement check
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any

from gpufleet.config import PoolConfig
from gpufleet.devices import select
from gpufleet.engine.backend import Fleet, WorkerHooks
from gpufleet.engine.progress import report_progress  # kept here too: its first home
from gpufleet.errors import ConfigError
from gpufleet.models.resolve import model_factory

__all__ = ["make_fleet", "report_progress"]


def make_fleet(model: Any, config: PoolConfig, hooks: WorkerHooks) -> Fleet:
    """``backend="process"``: one spawned child per worker (``workers_per_device`` per device)."""
    from gpufleet.devices.mps import pool_mps_status
    from gpufleet.engine.process.placement import model_blob
    from gpufleet.engine.process.worker import ProcessWorker

    if getattr(sys.modules.get("__main__"), "__name__", "") == "__mp_main__":
        # We are a spawned child re-running the user's script: without this, each child would start its
        # own pool and the parent would wait for workers that never come up.
        raise ConfigError("backend='process' starts workers with 'spawn', which re-runs your script in each "
                          "worker: create the Pool under `if __name__ == \"__main__\":`")
    if config.max_batch_size == 0:
        raise ConfigError("max_batch_size=0 (probe) is not supported with backend='process'; give a size")
    devices = select(config.devices, cpu_devices=config.cpu_devices)
    make_model = model_factory(model)
    blob = model_blob(model)
    mps = pool_mps_status(config.mps, devices)
    prefix = f"gpufleet_{os.getpid():x}{secrets.token_hex(2)}_"
    n = config.workers_per_device * len(devices)
    threads = max(1, (os.cpu_count() or 1) // n)
    workers: list[Any] = []
    for _ in range(config.workers_per_device):
        for dev in devices:
            workers.append(ProcessWorker(index=len(workers), device=dev, config=config, hooks=hooks,
                                         model_blob=blob, make_model=make_model,
                                         prefix=f"{prefix}w{len(workers)}_", threads_per_child=threads))
    return Fleet(devices, workers, mps=mps)
