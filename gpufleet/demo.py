"""The main job (``gpufleet demo`` / ``make demo``): detect moving text in a rendered video on every device.

Renders frames of moving text lines with PIL (ground truth known), runs the embedded ``textdet`` model over
them with a :class:`gpufleet.Pool` on all devices, writes ``frames.jsonl`` in frame order and returns a
summary: frames/s, per-device batches and average batch size, and detection recall against the ground truth.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from gpufleet import synth
from gpufleet.engine import Pool
from gpufleet.models import zoo

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def run_demo(
    out_dir: str | Path = "out/demo",
    *,
    frames: int = 120,
    size: tuple[int, int] = (640, 360),
    fps: int = 30,
    devices: str | None = None,
    cpu_devices: int | None = None,
    runtime: str = "auto",
    max_batch_size: int = 16,
    write_video: bool = True,
) -> dict[str, Any]:
    """Run the demo job and return its summary (also written to ``out_dir/summary.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rendered = list(synth.moving_text_frames(frames, size=size, seed=7))
    images = [f for f, _ in rendered]
    truth = [boxes for _, boxes in rendered]
    video_path = None
    if write_video:
        try:
            synth.write_video(out / "input.mp4", images, fps=fps)
            video_path = str(out / "input.mp4")
        except ImportError:
            log.info("PyAV not installed: the rendered video is not written (pip install 'gpufleet[video]')")
    t_load = time.perf_counter()
    with Pool(zoo.get("textdet", runtime=runtime, input_size=max(size)), devices, cpu_devices=cpu_devices,
              max_batch_size=max_batch_size, max_wait_ms=5) as pool:
        setup_s = time.perf_counter() - t_load
        t0 = time.perf_counter()
        found = 0.0
        jsonl = out / "frames.jsonl"
        with jsonl.open("w") as fh:
            for i, boxes in enumerate(pool.map(images)):  # results come back in frame order
                fh.write(json.dumps({"stream": "demo", "frame": i, "pts": round(i / fps, 6), "results": boxes}) + "\n")
                found += synth.box_recall([b["box"] for b in boxes], truth[i])
        elapsed = time.perf_counter() - t0
        stats = pool.stats()
    summary = {
        "frames": frames,
        "resolution": f"{size[0]}x{size[1]}",
        "devices": [g["device"] for g in stats["per_gpu_stats"]],
        "runtime": runtime,
        "setup_s": round(setup_s, 3),
        "elapsed_s": round(elapsed, 3),
        "fps": round(frames / elapsed, 2),
        "recall": round(found / frames, 4),
        "per_device": [{k: g[k] for k in ("device", "total_requests", "total_batches", "avg_batch_size")}
                       for g in stats["per_gpu_stats"]],
        "stages_ms": {k: {q: round(v[q], 3) for q in ("p50_ms", "p99_ms")} for k, v in stats["stages"].items()},
        "jsonl": str(jsonl),
        "video": video_path,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
