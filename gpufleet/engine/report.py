"""The pool's reports: ``health()`` in the seed's ``/health`` shape and ``stats()`` in the seed's ``/stats``
shape, assembled from the workers' counters and latency windows."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpufleet.devices.device import Device
from gpufleet.engine.backend import Worker
from gpufleet.engine.stats import BATCH_BUCKETS, LATENCY_BUCKETS, STAGES, percentiles

__all__ = ["health_report", "stats_report"]


def health_report(workers: Sequence[Worker], *, ready: bool, draining: bool) -> dict:
    backends = []
    for w in workers:
        snap = w.stats.snapshot()
        backends.append({
            "address": w.name, "device": w.device.label, "worker": w.index, "healthy": w.healthy,
            "enabled": w.enabled, "total_requests": snap["total_requests"], "error_count": snap["errors"],
            "error": None if w.error is None else str(w.error),
            "status": "up" if w.healthy else "restarting" if w.returning else "down",
        })
        if not w.healthy and w.returning:
            back = w.back_in_s()
            backends[-1]["back_in_s"] = None if back is None else round(back, 3)
        info = w.health_extra()  # process workers: pid, breaker state, restarts
        if info is not None:
            backends[-1].update(info, error_count=snap["errors"] + info.get("worker_failures", 0))
    healthy = sum(1 for b in backends if b["healthy"])
    restarting = sum(1 for b in backends if b["status"] == "restarting")
    status = "draining" if draining else "ok" if healthy else "restarting" if ready else "unavailable"
    return {"healthy": ready, "ready": ready, "draining": draining, "status": status,
            "total_backends": len(backends), "healthy_count": healthy, "restarting_count": restarting,
            "backends": backends}


def stats_report(workers: Sequence[Worker], devices: Sequence[Device], *, balancer: str, backend: str,
                 mps: dict | None, outstanding: int, started: float,
                 preprocess_samples: np.ndarray | None) -> dict:
    snaps = [(w, w.stats.snapshot()) for w in workers]
    per_gpu = []
    for dev in devices:
        mine = [(w, s) for w, s in snaps if w.device == dev]
        batches = sum(s["total_batches"] for _, s in mine)
        items = sum(w.stats.items_in_batches for w, _ in mine)
        per_gpu.append({
            "gpu_id": dev.index, "device": dev.label, "name": dev.name,
            "current_queue_depth": sum(len(w.batcher) for w, _ in mine),
            "outstanding": sum(w.outstanding for w, _ in mine),
            "total_requests": sum(s["total_requests"] for _, s in mine), "total_batches": batches,
            "avg_batch_size": round(items / batches, 3) if batches else 0.0,
            "errors": sum(s["errors"] for _, s in mine), "workers": len(mine),
            "busy_s": round(sum(s["busy_s"] for _, s in mine), 4), "idle_s": _idle(mine),
            "media_s": round(sum(s["media_s"] for _, s in mine), 4), "rtf": _rtf(mine),
            # where the device is, for backends whose workers run elsewhere (a Ray actor's node and host)
            **{k: v for w, _ in mine[:1] for k, v in w.placement().items() if k in ("node", "hostname")},
        })
    total_req = sum(s["total_requests"] for _, s in snaps)
    total_batches = sum(s["total_batches"] for _, s in snaps)
    items = sum(w.stats.items_in_batches for w, _ in snaps)
    uptime = time.monotonic() - started
    return {
        "num_gpus": len(devices), "num_workers": len(workers), "balancer": balancer, "backend": backend,
        "mps": mps, "total_requests": total_req, "total_batches": total_batches,
        "avg_batch_size": round(items / total_batches, 3) if total_batches else 0.0,
        "errors": sum(s["errors"] for _, s in snaps), "oom_events": sum(s["oom_events"] for _, s in snaps),
        "isolated_batches": sum(s["isolated_batches"] for _, s in snaps),
        "restarts": sum(s["restarts"] for _, s in snaps), "queue_depth": outstanding, "rtf": _rtf(snaps),
        "media_s": round(sum(s["media_s"] for _, s in snaps), 4),
        "uptime_s": round(uptime, 3), "throughput_rps": round(total_req / uptime, 3) if uptime > 0 else 0.0,
        "per_gpu_stats": per_gpu,
        "per_worker_stats": [{**w.describe(), **{k: v for k, v in s.items() if k != "stages"}} for w, s in snaps],
        "stages": _stages(workers, preprocess_samples),
        "histograms": _histograms(workers, devices),
    }


def _histograms(workers: Sequence[Worker], devices: Sequence[Device]) -> list[dict]:
    """Per device: cumulative batch-size and queue-wait histograms (``le`` bounds, counts, sum, count), the
    shape of a Prometheus histogram (``/metrics`` exposes them)."""
    out = []
    for dev in devices:
        mine = [w for w in workers if w.device == dev]
        sizes = np.zeros(len(BATCH_BUCKETS) + 1)
        wait = np.zeros(len(LATENCY_BUCKETS) + 1)
        items = 0
        wait_sum = 0.0
        for w in mine:
            with w.stats.lock:
                sizes += w.stats.batch_sizes
                items += w.stats.items_in_batches
            window = w.stats.stages.get("queue_wait")
            if window is not None:
                wait += window.histogram()
                wait_sum += window.total
        out.append({"device": dev.label, "gpu_id": dev.index,
                    "batch_size": {"le": list(BATCH_BUCKETS), "cumulative": np.cumsum(sizes).tolist(),
                                   "sum": items},
                    "queue_wait_seconds": {"le": list(LATENCY_BUCKETS), "cumulative": np.cumsum(wait).tolist(),
                                           "sum": wait_sum}})
    return out


def _stages(workers: Sequence[Worker], preprocess_samples: np.ndarray | None) -> dict[str, dict]:
    """Per-stage count, mean and percentiles (ms) over every worker's recent window."""
    stages: dict[str, dict] = {}
    names = {n for w in workers for n in list(w.stats.stages)} | set(STAGES)
    for name in sorted(names):
        parts = [w.stats.stages[name].samples() for w in workers if name in list(w.stats.stages)]
        if name == "preprocess" and preprocess_samples is not None:
            parts = [preprocess_samples]
        samples = np.concatenate(parts) if parts else np.zeros(0)
        if samples.size:
            stages[name] = {"count": int(samples.size), "mean_ms": float(samples.mean() * 1e3),
                            **percentiles(samples)}
    return stages


def _idle(snaps: Sequence[tuple[Any, dict]]) -> float | None:
    """Seconds ``snaps``' serving loops waited for work with nothing on the device; ``None`` where no loop
    measures it (only the thread backend's does)."""
    idle = [s["idle_s"] for _, s in snaps if s.get("idle_s") is not None]
    return round(sum(idle), 4) if idle else None


def _rtf(snaps: Sequence[tuple[Any, dict]]) -> float | None:
    """Real-time factor of ``snaps``' workers: device-busy seconds per second of audio/video their model
    produced or consumed (``output_seconds``); below 1 is faster than real time. ``None`` without media."""
    media = sum(s.get("media_s", 0.0) for _, s in snaps)
    return round(sum(s["busy_s"] for _, s in snaps) / media, 5) if media else None
