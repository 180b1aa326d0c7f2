"""W4 on one GPU, one process: where the pipeline stands against the NVDEC decode-only ceiling (issue 10).

With two GPUs each process runs 8 inputs on 8 decoders and reached 78% of its decode-only ceiling, while one
process with 16 inputs matched it. This runs, on GPU 0, in one process:
  * decode-only with D decoder threads for D in DECODE_ONLY (default "8 16");
  * the pipeline for each "inputs:decoders_per_gpu:decode_ahead" in CONFIGS (default "8:8:0 8:8:1 16:8:0 16:8:1");
  * with SPY=<py-spy binary> and SPY_TAG="<config tag> ..." (tag: the config with _ for :), py-spy records those
    configs from their 300th frame for 2 s (every thread, waiting or not: --threads --idle; and GIL holders,
    --gil) into $OUT/spy_w4_<tag>[_gil].txt.
Writes $OUT/w4_probe.json and prints one JSON line per step.
Usage: OUT=/tmp/out python scripts/gpu_w4_probe.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_video_scale as vs  # noqa: E402 - the same file, decode-only loop and model as the 2-GPU run

OUT = vs.OUT
report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_count": os.cpu_count()}


def decode_only(n: int) -> dict:
    vs.DECODERS = n
    return vs.decode_only([0])


def pipeline(inputs: int, decoders: int, ahead: int, tag: str) -> dict:
    import torch

    from gpufleet import video
    from gpufleet.bench import ImageClassifier

    buckets = (1, 2, 4, 8, 16, 32, 64, 128)
    model = ImageClassifier("resnet18", cuda_graphs=True, example_shape=(3, 224, 224), example_dtype=torch.uint8,
                            batch_buckets=buckets, warmup_batch_sizes=buckets)
    spy, seen = os.environ.get("SPY"), [0]

    def on_frame(_r) -> None:
        seen[0] += 1
        if seen[0] == 300 and spy and tag in os.environ.get("SPY_TAG", "").split():
            for extra, name in ((["--threads", "--idle"], ""), (["--gil"], "_gil")):
                subprocess.Popen([spy, "record", "-p", str(os.getpid()), "-d", "2", "-r", "200", "-f", "raw",
                                  "--nonblocking", *extra, "-o", str(OUT / f"spy_w4_{tag}{name}.txt")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    s = video.run([str(vs.src)] * inputs, model, devices="0", decoder="nvdec", batch_size=128, max_batch_size=128,
                  decoders_per_gpu=decoders, decode_ahead=ahead, queue_size=512, max_wait_ms=2, progress=False,
                  jsonl=str(OUT / "frames_probe.{stream}.jsonl"), on_frame=on_frame)
    for p in OUT.glob("frames_probe.*.jsonl"):
        p.unlink()
    return {k: s.get(k) for k in ("frames", "fps", "elapsed_s", "cpu_cores_used", "avg_batch_size",
                                  "stages_ms_per_frame", "exit_code")} \
        | {"segments": sum(r["segments"] for r in s["inputs"])}


def step(name: str, fn) -> None:
    try:
        report[name] = fn()
    except Exception as exc:  # noqa: BLE001 - record and go on
        report[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps({name: report[name]}, default=str), flush=True)
    (OUT / "w4_probe.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    if not vs.src.exists():
        step("file", vs.make)
    step("warmup", lambda: decode_only(8))
    for d in os.environ.get("DECODE_ONLY", "8 16").split():
        step(f"decode_only_{d}", lambda d=int(d): decode_only(d))
    for cfg in os.environ.get("CONFIGS", "8:8:0 8:8:1 16:8:0 16:8:1").split():
        i, d, a = (int(x) for x in cfg.split(":"))
        tag = cfg.replace(":", "_")
        step(f"pipeline_{tag}", lambda i=i, d=d, a=a, tag=tag: pipeline(i, d, a, tag))
