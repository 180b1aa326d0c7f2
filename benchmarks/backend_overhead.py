"""What each worker backend costs per batch, with a model that does nothing: the round trip of one item at a time
(latency per call) and the rate of full batches of small arrays, for thread, process and ray side by side.
With ``--sleep-ms S`` the model is a stand-in GPU whose batches take S ms each (launch/collect, like a CUDA
stream): a backend that overlaps its own cost with the device's reaches 1000 / S batches/s.

    python benchmarks/backend_overhead.py --backends thread,process,ray --seconds 3
    python benchmarks/backend_overhead.py --backends process,ray --sleep-ms 4.4 --cpu-devices 1
    python benchmarks/backend_overhead.py --backends process,ray --sleep-ms 0.01 --batch 128 --item-kb 294
    python benchmarks/backend_overhead.py --backends process,ray --sleep-ms 0.01 --batch 128 --item-kb 12 --bytes

(294 KiB: one float16 224x224x3 image; ``--bytes``: items are ``bytes`` objects, as JPEGs are when serving.)

Prints one JSON object per backend. With ray, the pool joins the cluster RAY_ADDRESS points at, else starts a
local one; on a machine without GPUs the workers are CPU devices (--cpu-devices).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from noop_model import NoOp, SleepDevice  # noqa: E402

from gpufleet import Pool  # noqa: E402


def measure(backend: str, seconds: float, batch: int, item_kb: int, cpu_devices: int | None,
            sleep_ms: float | None = None, as_bytes: bool = False) -> dict:
    model: object = NoOp if sleep_ms is None else SleepDevice(sleep_ms)  # an instance travels by value
    opts = {"cpu_devices": cpu_devices} if cpu_devices else {}
    if backend != "ray" and cpu_devices:
        opts["devices"] = "cpu"
    with Pool(model, backend=backend, max_batch_size=batch, max_wait_ms=1, **opts) as pool:
        pool.submit(0).result(timeout=120)  # warm
        lat = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            pool.submit(1).result(timeout=60)
            lat.append(time.perf_counter() - t0)
        item: object = bytes(item_kb * 1024) if as_bytes else np.zeros(item_kb * 1024, np.uint8)
        n = 0
        t0 = time.perf_counter()
        end = time.monotonic() + seconds

        def items():  # one stream, so the backend's pipeline stays full until the end
            while time.monotonic() < end:
                yield item

        for _ in pool.map(items()):
            n += 1
        rate = n / (time.perf_counter() - t0)
        workers = len(pool.workers)
    q = np.percentile(np.array(lat) * 1e3, [50, 99])
    return {"backend": backend, "workers": workers, "one_item_p50_ms": round(float(q[0]), 3),
            "one_item_p99_ms": round(float(q[1]), 3), "items_per_s": round(rate, 1), "batch": batch,
            "item_kb": item_kb, "items": "bytes" if as_bytes else "array", "batches_per_s": round(rate / batch, 1),
            **({"sleep_ms": sleep_ms, "device_busy": round(rate / batch * sleep_ms / 1e3 / workers, 3)}
               if sleep_ms is not None else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="thread,process,ray", help="comma-separated (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=64, help="items per batch (default: %(default)s)")
    ap.add_argument("--item-kb", type=int, default=150, help="bytes of each array item, KiB (default: %(default)s)")
    ap.add_argument("--cpu-devices", type=int, default=None, help="CPU devices instead of GPUs")
    ap.add_argument("--sleep-ms", type=float, default=None,
                    help="a stand-in GPU taking this many ms per batch instead of a model that does nothing")
    ap.add_argument("--bytes", action="store_true", help="items are bytes objects (JPEGs) instead of arrays")
    args = ap.parse_args()
    for b in args.backends.split(","):
        print(json.dumps(measure(b.strip(), args.seconds, args.batch, args.item_kb, args.cpu_devices,
                                 args.sleep_ms, args.bytes)), flush=True)


if __name__ == "__main__":
    main()
