"""Balancers on two real, unequal GPUs (issue 10, item 3).

GPU 1 is made slower by a second process that runs a background matmul load on it for the whole run (the
"another tenant on the GPU" case). ResNet-50 fp16 with CUDA graphs runs on both GPUs through one Pool; a
closed loop keeps CLIENTS requests in flight (each finished item submits the next) for SECONDS per
balancer. Prints one JSON line per balancer: items/s, p50/p99 and the items each GPU served, then the
speed each worker measured.
Usage: python scripts/gpu_balancers.py [SECONDS] [CLIENTS]    (CPU smoke: GPUFLEET_SMOKE=1, resnet18 32 px)
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time

import numpy as np
import torch

from gpufleet import Pool
from gpufleet.bench import ImageClassifier

SMOKE = os.environ.get("GPUFLEET_SMOKE") == "1"
SIZE = 32 if SMOKE else 224
LOAD = """
import sys, time, torch
dev = torch.device("cuda:1")
a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
print("background load on", torch.cuda.get_device_name(dev), flush=True)
while True:
    for _ in range(20):
        a @ a
    torch.cuda.synchronize(dev)
"""


def model() -> ImageClassifier:
    buckets = (1, 2, 4, 8, 16, 32, 64)
    return ImageClassifier("resnet18" if SMOKE else "resnet50", image_size=SIZE, precision="auto",
                           cuda_graphs=not SMOKE, batch_buckets=buckets, example_shape=(3, SIZE, SIZE),
                           example_dtype=torch.uint8, warmup_batch_sizes=buckets)


def run(balancer: str, seconds: float, clients: int) -> dict:
    img = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8)
    opts = {"cpu_devices": 2, "devices": "cpu"} if SMOKE else {"devices": "0,1"}
    with Pool(model(), balancer=balancer, max_batch_size=64, max_wait_ms=2, **opts) as pool:
        for _ in pool.map([img] * 512):  # warm-up; the speed balancer learns each worker's rate here
            pass
        done: queue.SimpleQueue = queue.SimpleQueue()
        lat: list[float] = []
        before = {g["device"]: g["total_requests"] for g in pool.stats()["per_gpu_stats"]}

        def send() -> None:
            t0 = time.perf_counter()
            pool.submit(img).add_done_callback(lambda f: done.put((t0, f)))

        for _ in range(clients):
            send()
        t_start = time.perf_counter()
        stop = t_start + seconds
        while True:
            t0, f = done.get()
            f.result()
            lat.append(time.perf_counter() - t0)
            if time.perf_counter() < stop:
                send()
            elif len(lat) >= clients and done.empty():
                break
        elapsed = time.perf_counter() - t_start
        st = pool.stats()
        item_ms = {w.device.label: round(w.item_time * 1e3, 4) for w in pool.workers}
    per = {g["device"]: g["total_requests"] - before[g["device"]] for g in st["per_gpu_stats"]}
    a = np.asarray(lat) * 1e3
    return {"balancer": balancer, "items_s": round(len(lat) / elapsed, 1),
            "p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "items_per_device": per, "share_device0": round(list(per.values())[0] / max(1, sum(per.values())), 3),
            "worker_ms_per_item": item_ms}


if __name__ == "__main__":
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    bg = None
    if not SMOKE:
        for name in ("queue-depth",):  # both GPUs free first: the equal-GPU baseline
            print(json.dumps({"background_load": False} | run(name, secs, clients)), flush=True)
        bg = subprocess.Popen([sys.executable, "-c", LOAD])
        time.sleep(5)
    try:
        for name in ("round-robin", "queue-depth", "speed"):
            print(json.dumps({"background_load": bg is not None} | run(name, secs, clients)), flush=True)
    finally:
        if bg is not None:
            bg.kill()
