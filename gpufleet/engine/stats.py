"""Counters and latency windows per worker, and the stats report in the seed's schema."""

from __future__ import annotations

import threading
import time

import numpy as np

__all__ = ["STAGES", "LatencyWindow", "WorkerStats", "percentiles"]

# Per-stage latencies recorded by the engine (seconds). Models may add their own (h2d, compute, d2h).
STAGES = ("queue_wait", "preprocess", "predict", "postprocess", "e2e")


class LatencyWindow:
    """The last ``size`` samples of one latency, plus running count and sum; percentiles on demand."""

    __slots__ = ("_buf", "_i", "count", "total")

    def __init__(self, size: int = 4096) -> None:
        self._buf = np.zeros(size, dtype=np.float64)
        self._i = 0
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        self._buf[self._i] = value
        self._i = (self._i + 1) % self._buf.shape[0]
        self.count += 1
        self.total += value

    def samples(self) -> np.ndarray:
        n = min(self.count, self._buf.shape[0])
        return self._buf[:n].copy()

    def summary(self) -> dict[str, float]:
        """Count, mean and p50/p90/p99 in milliseconds."""
        s = self.samples()
        out = {"count": self.count, "mean_ms": (self.total / self.count * 1e3) if self.count else 0.0}
        out.update(percentiles(s))
        return out


def percentiles(samples: np.ndarray, qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    """``{"p50_ms": ..., ...}`` of ``samples`` given in seconds."""
    if samples.size == 0:
        return {f"p{q}_ms": 0.0 for q in qs}
    values = np.percentile(samples, qs)
    return {f"p{q}_ms": float(v) * 1e3 for q, v in zip(qs, values)}


class WorkerStats:
    """What one worker did: items, batches, errors, restarts and per-stage latency windows."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total_requests = 0
        self.total_batches = 0
        self.items_in_batches = 0
        self.errors = 0
        self.oom_events = 0
        self.restarts = 0
        self.busy_s = 0.0
        self.media_s = 0.0  # seconds of audio/video produced, for models that declare output_seconds()
        self.started = time.monotonic()
        self.stages: dict[str, LatencyWindow] = {}

    def stage(self, name: str) -> LatencyWindow:
        w = self.stages.get(name)
        if w is None:
            # Readers copy the dict before iterating (``list(stages.items())``), so adding a key here is safe.
            w = self.stages.setdefault(name, LatencyWindow())
        return w

    def record_batch(self, n: int, busy_s: float) -> None:
        with self.lock:
            self.total_batches += 1
            self.items_in_batches += n
            self.busy_s += busy_s

    def snapshot(self) -> dict:
        with self.lock:
            avg = self.items_in_batches / self.total_batches if self.total_batches else 0.0
            return {
                "total_requests": self.total_requests,
                "total_batches": self.total_batches,
                "avg_batch_size": round(avg, 3),
                "errors": self.errors,
                "oom_events": self.oom_events,
                "restarts": self.restarts,
                "busy_s": round(self.busy_s, 4),
                "media_s": round(self.media_s, 4),
                "rtf": round(self.busy_s / self.media_s, 5) if self.media_s else None,
                "stages": {k: w.summary() for k, w in list(self.stages.items())},
            }
