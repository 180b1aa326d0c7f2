"""Balancer comparison on unequal devices (issue 10, item 3), on CPU devices with simulated speeds.

Device cpu:0 serves a batch in FAST_MS + per-item time, cpu:1 is SLOW× slower (sleep-based, so the two
workers really run in parallel). The same closed-loop workload (CLIENTS callers, each submitting one item
and waiting for it) runs through each balancer; prints throughput, p50/p99 and items per device.
Usage: python scripts/balancers.py [SECONDS]
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np

from gpufleet import Pool

FAST_MS, PER_ITEM_MS, SLOW, CLIENTS = 4.0, 0.25, 3.0, 32


class Unequal:
    def setup(self, device) -> None:
        self.scale = SLOW if device.index == 1 else 1.0

    def predict(self, batch: list) -> list:
        time.sleep((FAST_MS + PER_ITEM_MS * len(batch)) * self.scale / 1e3)
        return batch


def run(balancer: str, seconds: float) -> dict:
    lat: list[float] = []
    stop = time.monotonic() + seconds
    with Pool(Unequal, cpu_devices=2, balancer=balancer, max_batch_size=16, max_wait_ms=1) as pool:
        def client() -> None:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                pool.submit(0).result()
                lat.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        per = {g["device"]: g["total_requests"] for g in pool.stats()["per_gpu_stats"]}
    a = np.asarray(lat) * 1e3
    return {"balancer": balancer, "items_s": round(len(lat) / elapsed, 1),
            "p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "items_per_device": per,
            "fast_share": round(per["cpu:0"] / max(1, sum(per.values())), 3)}


if __name__ == "__main__":
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
    for name in ("round-robin", "queue-depth", "speed"):
        print(json.dumps(run(name, secs)), flush=True)
