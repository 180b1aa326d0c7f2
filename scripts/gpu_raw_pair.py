"""W1's ceiling on every GPU at once: ResNet-50 fp16 channels_last, one CUDA graph replay per batch of 64, input
already on the GPU, in one process per GPU started together (a barrier), for SECONDS. Tells how much of W2's
2-GPU figure the GPUs themselves allow when both run (shared host, PCIe, power). Prints one JSON line.
Usage: python3 scripts/gpu_raw_pair.py [SECONDS]"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time


def run(index: int, seconds: float, barrier, out) -> None:
    import torch

    from gpufleet.bench import _raw_graph
    from gpufleet.models.zoo.classifier import build_module

    dev = torch.device(f"cuda:{index}")
    torch.cuda.set_device(dev)
    module = build_module("resnet50").to(dev).half().eval().to(memory_format=torch.channels_last)
    _raw_graph(module, dev, torch.float16, 64, 224, 1.0, True)  # capture + warm
    barrier.wait()
    r = _raw_graph(module, dev, torch.float16, 64, 224, seconds, True)
    out.put((index, r["items_s"]))


def main() -> None:
    import torch

    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    n = torch.cuda.device_count()
    ctx = mp.get_context("spawn")
    res = {}
    for k in sorted({1, n}):
        barrier, out = ctx.Barrier(k), ctx.Queue()
        procs = [ctx.Process(target=run, args=(i, seconds, barrier, out)) for i in range(k)]
        for p in procs:
            p.start()
        got = dict(out.get(timeout=300) for _ in procs)
        for p in procs:
            p.join()
        res[f"{k}_gpus"] = {"per_gpu": {f"cuda:{i}": round(v) for i, v in sorted(got.items())},
                            "total": round(sum(got.values()))}
        time.sleep(1)
    print(json.dumps({"raw_graph_bs64_at_once": res}))


if __name__ == "__main__":
    main()
