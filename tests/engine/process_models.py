"""Models for the process-backend tests. They live in an importable module because spawned children import
them by name; markers in the items make a child crash, hang or fail on purpose."""

from __future__ import annotations

import os
import time

import numpy as np

from gpufleet.engine.process import report_progress
from gpufleet.errors import InputError
from gpufleet.models.base import Model, stacked_rows


def double(batch: list) -> list:
    """A module-level function model."""
    return [x * 2 for x in batch]


class Doubler(Model):
    """``x * 2`` for numbers and arrays; ``"poison"`` kills the process, ``"hang"`` sleeps forever,
    ``"sticky"`` raises a sticky CUDA error, ``"oom"`` runs out of memory, ``"bad"`` raises InputError,
    ``("sleep", s, v)`` sleeps s seconds (reporting progress) then answers v, ``"pid"`` answers the child's pid,
    a batch of ``("size", s)`` sleeps s seconds once and answers its own size for each."""

    def setup(self, device) -> None:
        self.device = device

    def predict(self, batch: list) -> list:
        if batch and all(isinstance(x, (list, tuple)) and x and x[0] == "size" for x in batch):
            time.sleep(batch[0][1])
            return [len(batch)] * len(batch)
        out = []
        for x in batch:
            if isinstance(x, str):
                if x == "poison":
                    os._exit(1)
                if x == "hang":
                    time.sleep(3600)
                if x == "sticky":
                    raise RuntimeError("CUDA error: an illegal memory access was encountered")
                if x == "oom":
                    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
                if x == "bad":
                    raise InputError("bad item")
                if x == "pid":
                    out.append(os.getpid())
                    continue
                if x == "device":
                    out.append(self.device.label)
                    continue
            if isinstance(x, (list, tuple)) and x and x[0] == "sleep":
                _, seconds, value = x
                steps = 4
                for k in range(steps):
                    time.sleep(seconds / steps)
                    report_progress((k + 1) / steps)
                out.append(value)
                continue
            out.append(x * 2)
        return out


class Echo(Model):
    """Returns each item unchanged (arrays, tensors, dicts, tuples...), checking it is readable."""

    def predict(self, batch: list) -> list:
        return [x.copy() if isinstance(x, np.ndarray) else x for x in batch]


class Stages(Model):
    """preprocess / postprocess run in the child: pids recorded per stage; ``"undecodable"`` fails preprocess."""

    def preprocess(self, item):
        if item == "undecodable":
            raise ValueError("cannot decode")
        return (item, os.getpid())

    def predict(self, batch: list) -> list:
        return [(x, pid, os.getpid()) for x, pid in batch]

    def postprocess(self, output):
        x, pre_pid, pid = output
        if x == "post-fail":
            raise KeyError("no label")
        return {"x": x, "pre": pre_pid, "predict": pid, "post": os.getpid()}


class FailingSetup(Model):
    def setup(self, device) -> None:
        raise RuntimeError(f"weights missing on {device.label}")

    def predict(self, batch: list) -> list:
        return batch


class FailingSetupOnOne(Model):
    """Set-up fails on device 1 only: a degraded start."""

    def setup(self, device) -> None:
        if device.index == 1:
            raise RuntimeError("device 1 is broken")

    def predict(self, batch: list) -> list:
        return [x + 1 for x in batch]


class Overlapping(Model):
    """Splits predict into launch/collect like TorchModel; each output is ``(x * 2, overlap)`` where overlap
    counts batches launched after this one and before it was collected (>0: the child kept two in flight)."""

    def setup(self, device) -> None:
        self.launched = 0

    def launch(self, batch: list) -> tuple[list, int]:
        self.launched += 1
        return batch, self.launched

    def collect(self, handle: tuple[list, int]) -> list:
        batch, seq = handle
        time.sleep(0.01)  # the "device" computing
        return [(x * 2, self.launched - seq) for x in batch]

    def predict(self, batch: list) -> list:
        return self.collect(self.launch(batch))


class PoolSettings(Model):
    """Answers the max batch size and batch buckets the pool gave it before ``setup``."""

    max_batch_size: int | None = None
    batch_buckets: tuple | None = None

    def setup(self, device) -> None:
        self.seen = (self.max_batch_size, self.batch_buckets)

    def predict(self, batch: list) -> list:
        return [self.seen for _ in batch]


class BlockAware(Model):
    """Per item: ``(sum of the item, got_block)`` where got_block says predict received a StackedBatch whose block
    still holds the items as its rows (one shared-memory block from the parent)."""

    def predict(self, batch: list) -> list:
        block = stacked_rows(batch)
        return [(int(np.asarray(x).sum()), block is not None and bool((np.asarray(block[i]) == np.asarray(x)).all()))
                for i, x in enumerate(batch)]


class BlockAwareKeep(BlockAware):
    """A preprocess that hands every item back as it is: the block survives."""

    def preprocess(self, item):
        return item


class BlockAwarePlusOne(BlockAware):
    """A preprocess that makes new items: predict must get them, not the block's rows."""

    def preprocess(self, item):
        return item + 1


class SlowDevice(Overlapping):
    """Overlapping whose "device" takes 0.2 s per batch and tells when it has finished (``ready``)."""

    def launch(self, batch: list) -> tuple[list, int, float]:
        self.launched += 1
        return batch, self.launched, time.monotonic() + 0.2

    def ready(self, handle: tuple[list, int, float]) -> bool:
        return time.monotonic() >= handle[2]

    def collect(self, handle: tuple[list, int, float]) -> list:
        batch, seq, done = handle
        time.sleep(max(0.0, done - time.monotonic()))
        return [(x * 2, self.launched - seq) for x in batch]


class BatchSizes(Model):
    """Answers each item with the size of the batch it came in; each batch takes 0.4 s."""

    def predict(self, batch: list) -> list:
        time.sleep(0.4)
        return [len(batch)] * len(batch)


class MarksPreprocess(Model):
    """Answers whether its preprocess ran on the item, and the item."""

    def preprocess(self, item):
        return ("pre", item)

    def predict(self, batch: list) -> list:
        return [(True, x[1]) if isinstance(x, tuple) and x[:1] == ("pre",) else (False, x) for x in batch]


class SlowSetup(Doubler):
    """A Doubler whose ``setup`` takes ``setup_s`` seconds (a GPU model's weights and graphs); ``"setup_at"``
    answers the wall-clock times its setup began and ended, ``"pid"`` the child's pid."""

    setup_s = 1.5

    def setup(self, device) -> None:
        t0 = time.time()
        time.sleep(self.setup_s)
        super().setup(device)
        self.setup_at = (t0, time.time())

    def predict(self, batch: list) -> list:
        return [self.setup_at if x == "setup_at" else y for x, y in zip(batch, super().predict(batch))]


class SpareReady(Model):
    """Answers whether ``prepare_spare`` ran in its process (a spare child's model, before it took over)."""

    prepared = False

    def prepare_spare(self) -> None:
        type(self).prepared = True

    def setup(self, device) -> None:
        pass

    def predict(self, batch: list) -> list:
        return [type(self).prepared for _ in batch]
