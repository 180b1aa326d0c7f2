"""Where the pool's last few percent of W2 go: the GPU's busy share and its kernels during ``Pool.map``.

W2 (``gpufleet bench --model resnet50 --precision fp16 --cuda-graphs``) runs the pool at 93–95% of the model's
CUDA-graph replay on most H100 hosts. This probe runs the same workload (uint8 224×224 images on the host through
``Pool.map``, CUDA graphs per bucket) and profiles one stretch of it with ``torch.profiler`` (CUDA activity): the
share of the stretch in which a kernel ran, the gaps between kernels (host-side stalls show as gaps), and the
kernels by total time (GPU-side extras such as the uint8 normalisation show there). Variants: the pipeline
depth, Python's switch interval, and ``--fused``, which normalises straight from the NCHW uint8 batch into the
channels_last half-precision input in one kernel instead of a layout copy first. One JSON line, then the kernels.

    python3 benchmarks/pool_gpu_profile.py [--batch 64] [--depth 2] [--switch-ms 0] [--fused] [--items 48000]

Written 2026-12-08 and run only on CPU so far (no GPU machine came): its first GPU run is the next step.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from gpufleet.engine import Pool
from gpufleet.tools.bench import BenchSpec, pool_workload


def fused_transform(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """ImageClassifier.transform without the uint8 layout copy: addcmul writes channels_last directly."""
    out = torch.empty(x.shape, dtype=self.dtype, device=x.device, memory_format=torch.channels_last)
    return torch.addcmul(self._shift, x, self._scale, out=out)


def busy_and_gaps(spans: list[tuple[float, float]]) -> tuple[float, list[float], float]:
    """The union of ``spans`` (µs): busy time, the gaps between busy stretches, and the whole stretch."""
    busy, gaps = 0.0, []
    start = end = None
    for s, e in sorted(spans):
        if end is None:
            start, end = s, e
        elif s > end:
            busy += end - start
            gaps.append(s - end)
            start, end = s, e
        else:
            end = max(end, e)
    if end is not None:
        busy += end - start
    whole = max(e for _, e in spans) - min(s for s, _ in spans) if spans else 0.0
    return busy, gaps, whole


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2, help="pipeline_depth")
    ap.add_argument("--switch-ms", type=float, default=0, help="Python's thread switch interval (0: leave it)")
    ap.add_argument("--fused", action="store_true", help="normalise without the layout copy first")
    ap.add_argument("--items", type=int, default=48000, help="items of the timed run; a quarter are profiled")
    args = ap.parse_args(argv)
    if args.switch_ms:
        sys.setswitchinterval(args.switch_ms / 1e3)
    if args.fused:
        from gpufleet.models.zoo.classifier import ImageClassifier

        ImageClassifier.transform = fused_transform  # type: ignore[method-assign]
    bs = args.batch
    images, model = pool_workload(BenchSpec(model="resnet50", precision="fp16", cuda_graphs=True), bs)
    with Pool(model, "0" if torch.cuda.is_available() else None, max_batch_size=bs, max_wait_ms=2.0,
              max_queue=1_000_000, pipeline_depth=args.depth) as pool:
        for _ in pool.map(images[: bs * 4]):
            pass
        t0 = time.perf_counter()
        for _ in pool.map(itertools.islice(itertools.cycle(images), args.items)):
            pass
        rate = args.items / (time.perf_counter() - t0)
        n = max(bs, args.items // 4)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in pool.map(itertools.islice(itertools.cycle(images), n)):
                pass
            profiled = n / (time.perf_counter() - t0)
    gpu = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels = [(e.time_range.start, e.time_range.end) for e in gpu if "Memcpy" not in e.name and "Memset" not in e.name]
    busy, gaps, whole = busy_and_gaps(kernels)
    gaps.sort(reverse=True)
    total: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for e in gpu:
        total[e.name[:70]] += e.time_range.end - e.time_range.start
        count[e.name[:70]] += 1
    print(json.dumps({"batch": bs, "depth": args.depth, "switch_ms": args.switch_ms, "fused": args.fused,
                      "items_s": round(rate), "profiled_items_s": round(profiled),
                      "kernel_busy_share": round(busy / whole, 4) if whole else None,
                      "stretch_ms": round(whole / 1e3, 1), "gaps_over_50us": sum(1 for x in gaps if x > 50),
                      "gap_sum_ms": round(sum(gaps) / 1e3, 2), "top_gaps_us": [round(x) for x in gaps[:12]]}))
    for name, t in total.most_common(15):
        print(f"  {t / 1e3:9.2f} ms {count[name]:6d}x {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
