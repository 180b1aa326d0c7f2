"""Where a GPU worker's start-up time goes, step by step, in a fresh process: prints one JSON line.

A process worker's restart reports coarse phases (``spawn_imports``, ``cuda_context``, ``weights``,
``cuda_graphs``, ``warmup``); this splits them: ``import torch``, ``import torchvision``, ``import gpufleet``,
CUDA initialisation (``torch.cuda.init`` + ``set_device``), the CUDA context (the first allocation), building
the classifier's module with random weights on the CPU and, as the embedded classifier does, on the GPU,
``.to(cuda)``, the cast to half precision, ``channels_last``, the first forward pass (cuDNN autotuning) and a
second one, a CUDA-graph capture per batch bucket (two buffers each, as the worker does), and, last, the whole
``ImageClassifier.setup`` again in this now warm process. Without a GPU the CUDA steps are
skipped (``null``) and the rest runs on the CPU.

    python3 benchmarks/restart_profile.py                      # resnet50, buckets 1..128
    python3 benchmarks/restart_profile.py --model resnet18 --max-batch-size 64 --no-full-setup
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # gpufleet from this checkout


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="a torchvision classifier name (default resnet50)")
    p.add_argument("--image-size", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--max-batch-size", type=int, default=128,
                   help="the largest CUDA-graph bucket; buckets are the powers of two up to it (default 128)")
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16",
                   help="the cast after .to(cuda) (default fp16, .half())")
    p.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    p.add_argument("--cpu", action="store_true", help="skip the CUDA steps even when a GPU is there")
    p.add_argument("--no-full-setup", action="store_true", help="skip the whole ImageClassifier.setup at the end")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    out: dict[str, Any] = {"model": args.model, "pid": os.getpid()}
    steps: dict[str, float | None] = {}

    def timed(name: str, fn: Any) -> Any:
        t = time.perf_counter()
        value = fn()
        steps[name] = round(time.perf_counter() - t, 4)
        return value

    torch = timed("import_torch", lambda: __import__("torch"))
    timed("import_torchvision", lambda: __import__("torchvision"))
    timed("import_gpufleet", lambda: __import__("gpufleet"))
    cuda = torch.cuda.is_available() and not args.cpu
    out["device"] = torch.cuda.get_device_name(args.device) if cuda else "cpu"
    out["torch"] = torch.__version__

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        timed("cuda_init", lambda: (torch.cuda.init(), torch.cuda.set_device(args.device)))
        timed("cuda_context", lambda: (torch.zeros(1, device="cuda"), sync()))
    else:
        steps["cuda_init"] = steps["cuda_context"] = None
    from gpufleet.models.zoo.classifier import build_module

    def build() -> Any:
        torch.manual_seed(0)
        return build_module(args.model).eval()

    module = timed("build_module_cpu", build)
    if cuda:  # what the embedded classifier does for random weights: initialise them on the GPU itself
        with torch.device("cuda", args.device):
            timed("build_module_gpu", lambda: (build(), sync())[0])
    else:
        steps["build_module_gpu"] = None
    dev = torch.device("cuda", args.device) if cuda else torch.device("cpu")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype] if cuda \
        else torch.float32
    if cuda:
        module = timed("to_cuda", lambda: (module.to(dev), sync())[0])
        module = timed("half", lambda: (module.to(dtype), sync())[0])
    else:
        steps["to_cuda"] = steps["half"] = None
    module = timed("channels_last", lambda: (module.to(memory_format=torch.channels_last), sync())[0])
    torch.backends.cudnn.benchmark = True  # as TorchModel sets it
    mean = torch.tensor((0.485, 0.456, 0.406), device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor((0.229, 0.224, 0.225), device=dev).view(1, 3, 1, 1) * 255

    def forward(x: Any) -> Any:
        x = ((x.float() - mean) / std).to(dtype).contiguous(memory_format=torch.channels_last)
        return module(x).float().softmax(1).max(1)

    x = torch.randint(0, 255, (1, 3, args.image_size, args.image_size), dtype=torch.uint8, device=dev)
    with torch.inference_mode():
        timed("first_forward", lambda: (forward(x), sync()))
        timed("second_forward", lambda: (forward(x), sync()))
    buckets = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b <= args.max_batch_size]
    if cuda:
        from gpufleet.models.cuda_graphs import GraphCache

        graphs = GraphCache(forward, dev, buckets)
        per_bucket: dict[str, float] = {}
        t_all = time.perf_counter()
        for b in buckets:
            t = time.perf_counter()
            graphs.warm([b], (3, args.image_size, args.image_size), torch.uint8)
            sync()
            per_bucket[str(b)] = round(time.perf_counter() - t, 4)
        steps["cuda_graphs"] = round(time.perf_counter() - t_all, 4)
        out["cuda_graphs_per_bucket"] = per_bucket
        out["gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    else:
        steps["cuda_graphs"] = None
    if not args.no_full_setup:
        from gpufleet.devices import select
        from gpufleet.models.zoo.classifier import ImageClassifier

        device = select(str(args.device) if cuda else "cpu", cpu_devices=1)[0]
        model = ImageClassifier(args.model, image_size=args.image_size)
        model.max_batch_size = args.max_batch_size
        timed("classifier_setup_warm_process", lambda: model.setup(device))
        out["classifier_setup_timings"] = {k: round(v, 4) for k, v in model.setup_timings.items()}
        if cuda:
            out["gpu_memory_mib_with_second_copy"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    out["steps_s"] = steps
    out["buckets"] = buckets
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
