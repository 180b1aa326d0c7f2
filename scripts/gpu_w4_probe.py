"""W4 on one GPU, one process: where the pipeline stands against the NVDEC decode-only ceiling (issue 10).

With two GPUs each process runs 8 inputs on 8 decoders and reached 78% of its decode-only ceiling, while one
such process alone on one GPU reaches 97% of it (2026-12-01). This runs, on GPU $DEVICE, in one process:
  * decode-only with D decoder threads for D in DECODE_ONLY (default "8 16");
  * the pipeline for each "inputs:decoders_per_gpu:decode_ahead" in CONFIGS (default "8:8:0 8:8:1 16:8:0 16:8:1");
  * with SPY=<py-spy binary> and SPY_TAG="<config tag> ..." (tag: the config with _ for :), py-spy records those
    configs from their 300th frame for 2 s (every thread, waiting or not: --threads --idle; and GIL holders,
    --gil) into $OUT/spy_w4_<tag>[_gil].txt.
DEVICE picks the GPU (default 0); with BARRIER=<dir>/<name> each pipeline's timed part starts together with other
processes' (see _barrier; gpu_all.sh step w4pair starts one per GPU). SRC reuses a video file made before.
Writes $OUT/w4_probe.json and prints one JSON line per step.
Usage: OUT=/tmp/out python scripts/gpu_w4_probe.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_video_scale as vs  # noqa: E402 - the same file, decode-only loop and model as the 2-GPU run

OUT = vs.OUT
report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_count": os.cpu_count()}


DEVICE = int(os.environ.get("DEVICE", "0"))


def decode_only(n: int) -> dict:
    vs.DECODERS = n
    return vs.decode_only([DEVICE])


def _barrier(tag: str):
    """With BARRIER=<dir>/<name>: say this process has set up config ``tag`` (<dir>/<name>.<tag>.ready), then wait
    for <dir>/go.<tag>, so the timed windows of processes started together line up (config by config)."""
    def wait(_totals) -> None:
        path = os.environ.get("BARRIER")
        if path:
            Path(f"{path}.{tag}.ready").touch()
            go = Path(path).parent / f"go.{tag}"
            while not go.exists():
                time.sleep(0.01)
    return wait


def pipeline(inputs: int, decoders: int, ahead: int, tag: str) -> dict:
    from gpufleet.video import VideoConfig
    from gpufleet.video.job import stream_names
    from gpufleet.video.pipeline import output_paths, run_here

    spy, seen = os.environ.get("SPY"), [0]

    def on_frame(_r) -> None:
        seen[0] += 1
        if seen[0] == 300 and spy and tag in os.environ.get("SPY_TAG", "").split():
            for extra, name in ((["--threads", "--idle"], ""), (["--gil"], "_gil")):
                subprocess.Popen([spy, "record", "-p", str(os.getpid()), "-d", "2", "-r", "200", "-f", "raw",
                                  "--nonblocking", *extra, "-o", str(OUT / f"spy_w4_{tag}{name}.txt")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    specs = [str(vs.src)] * inputs
    names = stream_names(specs)
    cfg = VideoConfig(model=vs.classifier(), devices=str(DEVICE), decoder="nvdec", batch_size=128, max_batch_size=128,
                      decoders_per_gpu=decoders, decode_ahead=ahead, queue_size=512, max_wait_ms=2, progress=False,
                      process_per_gpu=False, jsonl=str(OUT / "frames_probe.{stream}.jsonl"))
    s = run_here(specs, names, cfg, output_paths(cfg.jsonl, names), output_paths(None, names), on_frame,
                 on_start=_barrier(tag))
    for p in OUT.glob("frames_probe.*.jsonl"):
        p.unlink()
    return {k: s.get(k) for k in ("frames", "fps", "elapsed_s", "cpu_cores_used", "avg_batch_size", "devices",
                                  "stages_ms_per_frame", "exit_code")} \
        | {"segments": sum(r["segments"] for r in s["inputs"])}


def step(name: str, fn) -> None:
    vs.step(name, fn, into=report, path=OUT / "w4_probe.json")


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
