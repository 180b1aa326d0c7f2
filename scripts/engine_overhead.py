"""Engine overhead on CPU: items/s of ``Pool.map`` with an identity model, torch and torchvision imported.

Usage: python scripts/engine_overhead.py freeze|nofreeze   (PoolConfig.gc_freeze on or off)
"""

from __future__ import annotations

import gc
import sys
import time

import torch  # noqa: F401 - a realistic heap: what a model server has imported
import torchvision  # noqa: F401

from gpufleet import Pool


def identity(batch: list) -> list:
    return batch


def main(mode: str) -> None:
    with Pool(identity, cpu_devices=1, max_batch_size=64, max_wait_ms=1, gc_freeze=mode == "freeze") as pool:
        list(pool.map(range(2000)))
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            n = sum(1 for _ in pool.map(range(60000)))
            best = max(best, n / (time.perf_counter() - t0))
    print(mode, "items/s", round(best), "frozen objects", gc.get_freeze_count())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "freeze")
