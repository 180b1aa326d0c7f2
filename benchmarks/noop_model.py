"""Models that cost a known amount per batch, for measuring what a backend itself costs
(benchmarks/backend_overhead.py)."""

from __future__ import annotations

import time


class NoOp:
    """Answers each item with itself."""

    def setup(self, device: object) -> None:
        self.device = device

    def predict(self, batch: list) -> list:
        return list(batch)


class SleepDevice:
    """A stand-in for a GPU: each batch takes ``batch_ms`` (default 4.4: ResNet-50 fp16 at batch 64 on one
    H200) on a "device" that runs launched batches one after another, as a CUDA stream does. ``launch``
    returns at once, ``ready`` says whether the batch has finished, ``collect`` waits for it; answers each
    item with None. A backend that keeps the device busy reaches 1000 / batch_ms batches/s."""

    def __init__(self, batch_ms: float = 4.4) -> None:
        self.batch_s = batch_ms / 1e3

    def setup(self, device: object) -> None:
        self.free_at = 0.0  # when the "device" has finished everything launched so far

    def launch(self, batch: list) -> tuple[int, float]:
        self.free_at = max(time.monotonic(), self.free_at) + self.batch_s
        return len(batch), self.free_at

    def ready(self, handle: tuple[int, float]) -> bool:
        return time.monotonic() >= handle[1]

    def collect(self, handle: tuple[int, float]) -> list:
        n, done = handle
        time.sleep(max(0.0, done - time.monotonic()))
        return [None] * n

    def predict(self, batch: list) -> list:
        return self.collect(self.launch(batch))


class Ack:
    """Answers every item with ``{"ok": 1}``, whatever it is: ``gpufleet serve benchmarks/noop_model.py:Ack``
    under W3's load measures HTTP, JSON and the engine's queues alone (the "HTTP alone" ceiling)."""

    def setup(self, device: object) -> None:
        self.device = device

    def predict(self, batch: list) -> list:
        return [{"ok": 1}] * len(batch)
