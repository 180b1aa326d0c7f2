"""W2 on the GPUs under a sampling profiler: ``Pool.map`` of uint8 3x224x224 tensors through ResNet-50 fp16 with
CUDA graphs at batch 64, as `gpufleet bench` runs it, for SECONDS after warm-up. Writes READY_FILE when the
timed run starts (the caller attaches py-spy then) and prints one JSON line with items/s.
Usage: python3 scripts/gpu_w2_profile.py BACKEND GPUS SECONDS READY_FILE   e.g. process 0,1 8 /tmp/go"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time

import torch

from gpufleet import Pool
from gpufleet.models.zoo.classifier import ImageClassifier


def main() -> None:
    backend, gpus, seconds, ready = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    bs = 64
    g = torch.Generator().manual_seed(bs)
    images = [torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8, generator=g) for _ in range(512)]
    buckets = (1, 2, 4, 8, 16, 32, 64)
    model = ImageClassifier("resnet50", image_size=224, precision="fp16", cuda_graphs=True, batch_buckets=buckets,
                            example_shape=(3, 224, 224), example_dtype=torch.uint8, warmup_batch_sizes=buckets)
    depth = {"pipeline_depth": int(os.environ["PIPE"])} if os.environ.get("PIPE") else {}
    with Pool(model, gpus, backend=backend, max_batch_size=bs, max_wait_ms=2.0, max_queue=1_000_000, **depth) as pool:
        for _ in pool.map(images * 2):
            pass
        with open(ready, "w") as f:
            f.write(f"{os.getpid()} " + " ".join(str(getattr(w, "pid", "")) for w in pool.workers))
        n = int(30_000 * seconds)
        t0 = time.perf_counter()
        c0 = time.process_time()
        done = 0
        limit = int(os.environ.get("IN_FLIGHT") or 0) or None
        for _ in pool.map(itertools.islice(itertools.cycle(images), n), max_in_flight=limit):
            done += 1
            if done % 4096 == 0 and time.perf_counter() - t0 > seconds:
                break
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        st = pool.stats()
    print(json.dumps({"backend": backend, "gpus": gpus, "items_s": round(done / wall),
                      "parent_cpu_cores": round(cpu / wall, 2), "parent_cpu_us_per_item": round(cpu / done * 1e6, 1),
                      "switch_interval_ms": sys.getswitchinterval() * 1e3,
                      "in_flight": os.environ.get("IN_FLIGHT") or "default",
                      "pipeline_depth": os.environ.get("PIPE") or "default",
                      "stages_p50_ms": {k: round(v["p50_ms"], 3) for k, v in st["stages"].items()},
                      "per_device": {d["device"]: d["total_requests"] for d in st["per_gpu_stats"]}}))


if __name__ == "__main__":
    if os.environ.get("SWITCH_MS"):
        sys.setswitchinterval(float(os.environ["SWITCH_MS"]) / 1e3)
    main()
