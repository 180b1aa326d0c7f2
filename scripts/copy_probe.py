"""Host copy bandwidth for W2's stacking: 64 uint8 3x224x224 images (9.6 MB) into a pinned (CUDA) or plain
buffer, by 1, 2, 4 and 8 threads at once (each its own batch and buffer, numpy copy per item, GIL released
per item), plus one contiguous 9.6 MB copy. Tells whether W2's `batch` stage is bound per thread, by the GIL
or by the host's memory. Usage: python3 scripts/copy_probe.py  (prints one JSON line)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import torch

N, SHAPE, SECONDS = 64, (3, 224, 224), 1.0
src = [torch.randint(0, 256, SHAPE, dtype=torch.uint8) for _ in range(512)]  # 77 MB: out of cache, as in W2
pinned = torch.cuda.is_available()


def buffer() -> np.ndarray:
    return torch.empty((N, *SHAPE), dtype=torch.uint8, pin_memory=pinned).numpy()


def run(threads: int) -> dict:
    counts = [0] * threads
    stop = time.perf_counter() + SECONDS

    def work(k: int) -> None:
        dst, i = buffer(), k * 64
        while time.perf_counter() < stop:
            for j in range(N):
                np.copyto(dst[j], src[(i + j) % len(src)].numpy(), casting="no")
            i += N
            counts[k] += 1

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    w = time.perf_counter() - t0
    batches = sum(counts)
    return {"threads": threads, "ms_per_batch_per_thread": round(w / max(1, batches) * threads * 1e3, 3),
            "GB_s_total": round(batches * N * src[0].numel() / w / 1e9, 2)}


big_src, big_dst = torch.randint(0, 256, (N, *SHAPE), dtype=torch.uint8).numpy(), buffer()
t0, k = time.perf_counter(), 0
while time.perf_counter() - t0 < SECONDS:
    np.copyto(big_dst, big_src)
    k += 1
contiguous = round(k * big_src.nbytes / (time.perf_counter() - t0) / 1e9, 2)
print(json.dumps({"pinned": pinned, "contiguous_one_thread_GB_s": contiguous,
                  "per_item": [run(t) for t in (1, 2, 4, 8)]}))
