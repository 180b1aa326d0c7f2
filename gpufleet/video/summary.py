"""The summary a video job returns, built from its parts (one process, or merged from worker processes)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["summary_record"]


def summary_record(*, rows: list[dict[str, Any]], elapsed: float, wall: float, cpu_s: float, interrupted: bool,
                   processes: int, model: str, devices: list[str], encoders: set[str], batches: int,
                   avg_batch_size: float, stages: dict[str, float], per_device: list[dict[str, Any]],
                   per_process: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The summary :func:`gpufleet.video.run` returns, from its parts (one process, or merged from worker processes:
    ``per_process`` gives each one's device, frames, own timed window, fps, CPU and start within the
    union window; empty when the job ran in this process)."""
    frames = sum(r["frames"] for r in rows)
    failed = sum(r["status"] == "failed" for r in rows)
    return {
        "frames": frames,
        "elapsed_s": round(elapsed, 3),
        "wall_s": round(wall, 3),
        "fps": round(frames / elapsed, 2) if elapsed > 0 else 0.0,
        "model": model,
        "devices": devices,
        "decoders": sorted({r["decoder"] for r in rows if r["decoder"]}),
        "encoders": sorted(encoders),
        "batches": batches,
        "avg_batch_size": avg_batch_size,
        "per_device": per_device,
        "stages_s": {k: round(v, 4) for k, v in stages.items()},
        "stages_ms_per_frame": {k: round(v / frames * 1e3, 4) if frames else 0.0 for k, v in stages.items()},
        "cpu_s": round(cpu_s, 3),
        "cpu_cores_used": round(cpu_s / elapsed, 3) if elapsed > 0 else 0.0,
        "cpu_count": os.cpu_count(),
        "inputs": rows,
        "processes": processes,
        "per_process": per_process or [],
        "failed": failed,
        "interrupted": interrupted,
        "exit_code": 130 if interrupted else (1 if failed else 0),
    }
