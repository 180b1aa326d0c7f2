"""W4 `video1080` on 1 GPU and on every GPU, side by side in one run (issues 8 and 10).

Makes the BENCH.md file (1920x1080 H.264, 600 frames, keyframe every 30), then for each device set in
DEVICE_SETS (default "0" and "0,1"):
  * decode-only ceiling: DECODERS NVDEC decoders per GPU, each decoding the whole file, frames to CUDA tensors;
  * the pipeline: INPUTS copies of the file through `gpufleet.video.run` with ResNet-18 224 (CUDA graphs),
    DECODERS decoders per GPU, JSONL in frame order; fps, CPU cores, frames per device.
Writes $OUT/video_scale.json and prints one JSON line per step.
Usage: OUT=/tmp/out python scripts/gpu_video_scale.py
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from pathlib import Path

import av
import torch

from gpufleet import synth, video
from gpufleet.video.sources import NvdecSource, probe

OUT = Path(os.environ.get("OUT", "/tmp/out"))
N = int(os.environ.get("FRAMES", "600"))
INPUTS = int(os.environ.get("INPUTS", "8"))
DECODERS = int(os.environ.get("DECODERS", "8"))
SETS = os.environ.get("DEVICE_SETS", "0;0,1").split(";")
report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
                "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                "cpu_count": os.cpu_count(), "inputs": INPUTS, "decoders_per_gpu": DECODERS}
src = Path(os.environ.get("SRC") or OUT / "video1080.mp4")  # SRC: reuse a file made before


def make() -> dict:
    t0 = time.perf_counter()
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264", rate=30, options={"g": "30", "keyint_min": "30", "preset": "veryfast"})
        s.width, s.height, s.pix_fmt = 1920, 1080, "yuv420p"
        for f, _ in synth.moving_text_frames(N, size=(1920, 1080), n_lines=4, seed=1):
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return {"frames": probe(str(src)).frames, "size_mb": round(src.stat().st_size / 1e6, 2),
            "seconds": round(time.perf_counter() - t0, 1)}


def timed(fn) -> dict:
    torch.cuda.synchronize()
    w0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    torch.cuda.synchronize()
    w, c = time.perf_counter() - w0, time.process_time() - c0
    return {"frames": n, "seconds": round(w, 3), "fps": round(n / w, 1), "cpu_cores_used": round(c / w, 2)}


def decode_only(gpus: list[int]) -> dict:
    """NVDEC ceiling: DECODERS threads per GPU in this process (one GPU) or one process per GPU (several: the
    decoder threads of one process are bound by its Python threads, as the pipeline's are)."""
    if len(gpus) > 1:
        import multiprocessing as mp

        w0 = time.perf_counter()
        with mp.get_context("spawn").Pool(len(gpus)) as procs:
            parts = procs.map(decode_only, [[g] for g in gpus])
        w = time.perf_counter() - w0  # includes the workers' start (CUDA init): a lower bound on fps
        n = sum(p["frames"] for p in parts)
        return {"frames": n, "fps_sum_of_processes": round(sum(p["fps"] for p in parts), 1),
                "fps_wall_incl_start": round(n / w, 1), "fps": round(sum(p["fps"] for p in parts), 1),
                "cpu_cores_used": round(sum(p["cpu_cores_used"] for p in parts), 2),
                "decoders": DECODERS * len(gpus), "processes": len(gpus)}
    info = probe(str(src))
    counts: list[int] = []

    def work(slot: int, gpu: int) -> None:
        for chunk in NvdecSource(info, gpu_id=gpu, chunk=32):
            counts[slot] += len(chunk)

    def go() -> int:
        jobs = [(i, g) for i, g in enumerate(g for g in gpus for _ in range(DECODERS))]
        counts[:] = [0] * len(jobs)
        ts = [threading.Thread(target=work, args=j) for j in jobs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return sum(counts)

    return timed(go) | {"decoders": DECODERS * len(gpus)}


def classifier():
    """W4's model: ResNet-18 on 224x224 uint8 frames, CUDA graphs for batches up to 128."""
    from gpufleet.bench import ImageClassifier

    buckets = (1, 2, 4, 8, 16, 32, 64, 128)
    return ImageClassifier("resnet18", cuda_graphs=True, example_shape=(3, 224, 224), example_dtype=torch.uint8,
                           batch_buckets=buckets, warmup_batch_sizes=buckets)


def pipeline(devices: str) -> dict:
    s = video.run([str(src)] * INPUTS, classifier(), devices=devices, decoder="nvdec", batch_size=128,
                  max_batch_size=128, decoders_per_gpu=DECODERS, queue_size=512, max_wait_ms=2, progress=False,
                  jsonl=str(OUT / f"frames_{devices.replace(',', '')}.{{stream}}.jsonl"))
    per_dev = {g["device"]: g["total_requests"] for g in s["per_device"]}
    return {k: s.get(k) for k in ("frames", "fps", "elapsed_s", "cpu_cores_used", "avg_batch_size", "decoders",
                                  "devices", "processes", "per_process", "stages_ms_per_frame", "exit_code")} \
        | {"frames_per_device": per_dev}


class Contexts:
    """Samples ``nvidia-smi --query-compute-apps`` while a step runs: which process holds a CUDA context on
    which GPU (a process meant for one GPU that also holds one on another would share that GPU's time)."""

    def __init__(self, every_s: float = 0.3) -> None:
        import subprocess

        self.every_s, self.seen, self.stop = every_s, {}, threading.Event()
        q = "--query-gpu=index,pci.bus_id"
        out = subprocess.run(["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True).stdout
        self.index = {b.strip().lower(): i.strip() for i, b in (ln.split(",") for ln in out.splitlines() if "," in ln)}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import subprocess

        while not self.stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_bus_id,used_memory",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
            for ln in out.splitlines():
                parts = [x.strip() for x in ln.split(",")]
                if len(parts) == 3:
                    key = (parts[0], self.index.get(parts[1].lower(), parts[1]))
                    self.seen[key] = max(self.seen.get(key, 0), int(parts[2]) if parts[2].isdigit() else 0)
            self.stop.wait(self.every_s)

    def __enter__(self) -> Contexts:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def report(self) -> dict:
        """``{pid: {gpu: MiB}}`` for every process seen, and the pids that held contexts on several GPUs."""
        by_pid: dict[str, dict[str, int]] = {}
        for (pid, gpu), mib in sorted(self.seen.items()):
            by_pid.setdefault(pid, {})[gpu] = mib
        return {"contexts": by_pid, "on_several_gpus": [p for p, g in by_pid.items() if len(g) > 1],
                "this_pid": str(os.getpid())}


def contexts_of(fn, *args) -> dict:
    with Contexts() as ctx:
        out = fn(*args)
    return out | ctx.report()


def step(name: str, fn, into: dict | None = None, path: Path | None = None) -> None:
    """Run ``fn``, record its result (or its error) as ``name`` in ``into`` (this run's report) and rewrite the
    report's JSON file (``path``, default $OUT/video_scale.json), so a cut-off run keeps what it measured."""
    into = report if into is None else into
    try:
        into[name] = fn()
    except Exception as exc:  # noqa: BLE001 - record and go on
        traceback.print_exc()
        into[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps({name: into[name]}, default=str), flush=True)
    (path or OUT / "video_scale.json").write_text(json.dumps(into, indent=2, default=str))


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    if not (os.environ.get("SRC") and src.exists()):
        step("file", make)
    step("warmup", lambda: decode_only([0]))  # file cache, CUDA contexts, library load
    for ds in SETS:
        gpus = [int(g) for g in ds.split(",")]
        step(f"decode_only_gpus{ds.replace(',', '')}", lambda g=gpus: decode_only(g))
        step(f"pipeline_gpus{ds.replace(',', '')}", lambda d=ds: contexts_of(pipeline, d))
    for ds in SETS[1:]:
        a, b = report.get(f"pipeline_gpus{SETS[0]}", {}), report.get(f"pipeline_gpus{ds.replace(',', '')}", {})
        if a.get("fps") and b.get("fps"):
            print(f"W4 speedup {ds} vs {SETS[0]}: {b['fps'] / a['fps']:.2f}x ({a['fps']} -> {b['fps']} fps)")
