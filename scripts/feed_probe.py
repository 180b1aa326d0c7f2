"""W2's host path on CPU: ``Pool.map`` of uint8 3x224x224 tensors to workers whose "GPU" is a sleep of 4.2 ms
per 64 items (one H200's ResNet-50 fp16 CUDA-graph time), served one batch after another as a GPU would.
The stand-in stacks each batch into a staging buffer as TorchModel does, so the host work per item is W2's
and only the GPU is simulated. Usage: python scripts/feed_probe.py thread|process WORKERS [SECONDS]
Prints one JSON line: items/s, the ideal (WORKERS x 64 / 4.2 ms = 15,238 per worker) and the CPU time of this
(parent) process per item. GPU_MS_PER_64 changes the simulated GPU time."""

from __future__ import annotations

import itertools
import json
import os
import sys
import time

import numpy as np
import torch

from gpufleet import Pool
from gpufleet.models.base import Model, stacked_rows

GPU_S_PER_64 = float(os.environ.get("GPU_MS_PER_64", "4.2")) / 1e3


class FakeGPU(Model):
    """Stacks the batch on the host, then "runs" it: done 4.2 ms x n/64 after the previous batch is done."""

    def setup(self, device) -> None:
        self.free_at = 0.0
        self.staging = None

    def launch(self, batch: list) -> tuple[int, float]:
        n = len(batch)
        if self.staging is None or self.staging.shape[0] < n:
            self.staging = np.empty((max(64, n), *batch[0].shape), np.uint8)
        x = self.staging[:n]
        block = stacked_rows(batch)
        if block is not None:  # as TorchModel: one copy of the whole block
            np.copyto(x, block.numpy(), casting="no")
        else:
            for i, t in enumerate(batch):
                np.copyto(x[i], t.numpy(), casting="no")
        start = max(time.perf_counter(), self.free_at)
        self.free_at = start + GPU_S_PER_64 * len(x) / 64
        return len(x), self.free_at

    def ready(self, handle: tuple[int, float]) -> bool:
        return time.perf_counter() >= handle[1]

    def collect(self, handle: tuple[int, float]) -> list:
        n, ready = handle
        wait = ready - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        return [(7, 0.5)] * n

    def predict(self, batch: list) -> list:
        return self.collect(self.launch(batch))


def main() -> None:
    backend, workers = sys.argv[1], int(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8, generator=g) for _ in range(512)]
    with Pool(FakeGPU(), "cpu", cpu_devices=workers, backend=backend, max_batch_size=64, max_wait_ms=2.0,
              max_queue=1_000_000) as pool:
        for _ in pool.map(images[:256]):
            pass
        n = int(15_238 * workers * seconds)
        c0, t0 = time.process_time(), time.perf_counter()
        limit = int(os.environ.get("IN_FLIGHT") or 0) or None
        done = sum(1 for _ in pool.map(itertools.islice(itertools.cycle(images), n), max_in_flight=limit))
        rate = done / (time.perf_counter() - t0)
        cpu_us = (time.process_time() - c0) / done * 1e6
        st = pool.stats()
    print(json.dumps({"backend": backend, "workers": workers, "items_s": round(rate),
                      "ideal": round(workers * 64 / GPU_S_PER_64),
                      "parent_cpu_us_per_item": round(cpu_us, 1),
                      "avg_batch": round(st["total_requests"] / max(1, st["total_batches"]), 1),
                      "stages_p50_ms": {k: round(v["p50_ms"], 3) for k, v in st["stages"].items()}}))


if __name__ == "__main__":
    main()
