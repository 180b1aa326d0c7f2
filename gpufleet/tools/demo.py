"""The main job (``gpufleet demo`` / ``make demo``): detect moving text in a rendered video with the video pipeline.

Renders frames of moving text lines with PIL (ground truth known), encodes them to ``input.mp4`` (H.264, a
keyframe every second so the file splits across devices), runs :func:`gpufleet.video.run` with the embedded
``textdet`` model on all devices, which writes ``frames.jsonl`` (frame order) and the annotated
``annotated.mp4``, and returns the pipeline's summary plus detection recall against the ground truth.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from gpufleet.errors import ConfigError
from gpufleet.tools import synth

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
    decoder: str = "auto",
    progress: bool | None = False,
) -> dict[str, Any]:
    """Run the demo job and return its summary (also written to ``out_dir/summary.json``).

    ``write_video=False`` skips the annotated output (``input.mp4`` is always written: it is the input).
    """
    try:
        import av  # noqa: F401
    except ImportError as exc:
        raise ConfigError("the demo runs the video pipeline, which needs PyAV: pip install 'gpufleet[video]'") \
            from exc
    from gpufleet import video
    from gpufleet.video.sinks import encode_frames

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rendered = list(synth.moving_text_frames(frames, size=size, seed=7))
    truth = [boxes for _, boxes in rendered]
    source = out / "input.mp4"
    encode_frames(source, (f for f, _ in rendered), fps=fps, gop=min(fps, max(8, frames // 8)))  # short ones split too
    jsonl = out / "frames.jsonl"
    annotated = out / "annotated.mp4" if write_video else None
    t0 = time.perf_counter()
    summary = video.run(str(source), "textdet", runtime=runtime, devices=devices, cpu_devices=cpu_devices,
                        batch_size=max_batch_size, max_batch_size=max_batch_size, decoder=decoder,
                        jsonl=str(jsonl), out=str(annotated) if annotated else None, progress=progress)
    total_s = time.perf_counter() - t0
    found, seen = 0.0, 0
    with jsonl.open() as fh:
        for line in fh:
            rec = json.loads(line)
            found += synth.box_recall([r["box"] for r in rec["results"] or []], truth[rec["frame"]])
            seen += 1
    summary.update({
        "resolution": f"{size[0]}x{size[1]}",
        "runtime": _resolved_runtime(runtime, devices, cpu_devices),
        "setup_s": round(max(0.0, total_s - summary["elapsed_s"]), 3),
        "recall": round(found / seen, 4) if seen else 0.0,
        "frames_checked": seen,
        "jsonl": str(jsonl),
        "video": str(annotated) if annotated and summary["inputs"][0]["out"] else None,
        "input": str(source),
        "stages_ms": summary["stages_ms_per_frame"],
    })
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _resolved_runtime(runtime: str, devices: str | None, cpu_devices: int | None) -> str:
    """What ``auto`` picked for the first device: ONNX Runtime on CPU devices, PyTorch on GPUs without ORT-CUDA."""
    if runtime != "auto":
        return runtime
    from gpufleet.devices import select
    from gpufleet.models.zoo.runner import resolve_runtime

    return resolve_runtime(runtime, select(devices, cpu_devices=cpu_devices)[0])
