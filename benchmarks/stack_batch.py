"""How long a GPU worker's launching thread takes to stack a batch of host images into its pinned buffer.

Two ways, each alone and beside a thread that runs pure Python half the time (as the pool's serving threads do):
one numpy memcpy per item (each releases the GIL and retakes it after), and what ``TorchModel`` does since
2026-12-08: one ``torch.stack`` into the buffer, single-threaded in the launching thread (OpenMP's thread count
set to 1 for that thread only), which releases the GIL once per batch. One JSON line per case: p50 in ms.

    python3 benchmarks/stack_batch.py [--batch-sizes 64,128] [--repeats 60]

Batches of 64 / 128 images of 3×224×224 uint8, 2026-12-08. The 2-core development VM, two runs: per-item
0.7–0.9 / 2.0–2.2 ms alone, 2.0–2.8 / 4.3–4.5 ms beside the busy thread; one serial stack 0.5–0.8 / 1.6–1.9 ms
alone, 0.7 / 1.9–2.0 ms beside it. One H100 host (host Q, 16 cores): per-item 1.1 / 2.3 ms alone, 3.0 / 7.3 ms
beside the busy thread; one serial stack 0.9 / 2.0 ms alone, 1.0 / 2.0 ms beside it.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import torch
from gil_convoy import hog

from gpufleet.models.torch_model import _serial_here


def per_item(items: list[torch.Tensor], buf: torch.Tensor) -> None:
    dst = buf.numpy()
    for i, t in enumerate(items):
        np.copyto(dst[i], t.numpy(), casting="no")


def one_stack(items: list[torch.Tensor], buf: torch.Tensor) -> None:
    torch.stack(items, out=buf[: len(items)])


def timed(fn, pool: list[torch.Tensor], buf: torch.Tensor, n: int, repeats: int, serial: bool) -> float:
    """p50 in ms of ``fn`` on rotating batches of ``n``, run in a fresh thread (made serial if ``serial``)."""
    out: list[float] = []

    def body() -> None:
        if serial:
            _serial_here()
        for r in range(repeats):
            k = (r * n) % (len(pool) - n)
            t = time.perf_counter()
            fn(pool[k:k + n], buf)
            out.append(time.perf_counter() - t)

    th = threading.Thread(target=body)
    th.start()
    th.join()
    return float(np.median(out) * 1e3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", default="64,128")
    ap.add_argument("--repeats", type=int, default=60)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    pool = [torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8) for _ in range(2 * max(sizes) + 1)]
    buf = torch.empty((max(sizes), 3, 224, 224), dtype=torch.uint8)
    for busy in (False, True):
        stop = threading.Event()
        th = threading.Thread(target=hog, args=(stop, 300e-6, 300e-6), daemon=True)  # busy half the time
        if busy:
            th.start()
            time.sleep(0.05)
        for n in sizes:
            row = {"batch": n, "busy_thread": busy,
                   "per_item_ms": round(timed(per_item, pool, buf, n, args.repeats, False), 2),
                   "one_serial_stack_ms": round(timed(one_stack, pool, buf, n, args.repeats, True), 2)}
            print(json.dumps(row), flush=True)
        stop.set()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
