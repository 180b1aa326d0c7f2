"""Counters and latency windows per worker, and the stats report in the seed's schema."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "STAGES", "LatencyWindow", "WorkerStats", "percentiles"]

# Per-stage latencies recorded by the engine (seconds). Models may add their own (h2d, compute, d2h).
STAGES = ("queue_wait", "preprocess", "predict", "postprocess", "e2e")
# Upper bounds of the cumulative histograms in stats()["histograms"] (Prometheus' "le"); +Inf is implied.
LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = tuple(2 ** i for i in range(13))  # 1, 2, 4, ... 4096 items


class LatencyWindow:
    """The last ``size`` samples of one latency, plus running count and sum; percentiles on demand."""

    __slots__ = ("_buf", "_fold_lock", "_folded", "_hist", "_i", "count", "total")

    def __init__(self, size: int = 4096) -> None:
        self._buf = np.zeros(size, dtype=np.float64)
        self._i = 0
        self.count = 0
        self.total = 0.0
        self._fold_lock = threading.Lock()
        self._folded = 0  # samples already counted into _hist
        self._hist = np.zeros(len(LATENCY_BUCKETS) + 1, dtype=np.float64)

    def add(self, value: float) -> None:
        self._buf[self._i] = value
        self._i = (self._i + 1) % self._buf.shape[0]
        self.count += 1
        self.total += value

    def samples(self) -> np.ndarray:
        n = min(self.count, self._buf.shape[0])
        return self._buf[:n].copy()

    def histogram(self) -> np.ndarray:
        """Counts per ``LATENCY_BUCKETS`` bucket (+Inf last, not cumulative) of every sample since the start.

        Built when read, not when recorded (``add`` stays a store and two additions): the samples added since
        the last read are counted from the ring buffer. If more than the buffer holds arrived in between, the
        buffer's samples stand for all of them, in proportion (counts may then be fractional)."""
        with self._fold_lock:
            count, i, size = self.count, self._i, self._buf.shape[0]
            new = count - self._folded
            if new > 0:
                k = min(new, size)
                recent = self._buf[np.arange(i - k, i) % size]
                counts = np.bincount(np.searchsorted(LATENCY_BUCKETS, recent, side="left"),
                                     minlength=self._hist.shape[0])
                self._hist += counts * (new / k)
                self._folded = count
            return self._hist.copy()

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
        self.isolated_batches = 0  # batches served again in halves to isolate an item the model failed on
        self.restarts = 0
        self.setup_kills = 0  # restarts whose new process was killed by a signal before it was ready
        self.restart_s_total = 0.0  # seconds from each failure seen to the replacement serving, summed
        self.last_restart: dict[str, float] = {}  # the last restart's breakdown (seconds per phase)
        self.busy_s = 0.0
        # Seconds the serving loop waited for a batch with nothing on the device; None where not measured (the
        # thread backend's loop and the process backend's child measure it; the child reports with each batch).
        self.idle_s: float | None = None
        self.idle_since: float | None = None  # when the wait under way began
        self.media_s = 0.0  # seconds of audio/video produced, for models that declare output_seconds()
        self.progress: Any = None  # the last report_progress() value of the batch being served
        self.started = time.monotonic()
        self.stages: dict[str, LatencyWindow] = {}
        self.batch_sizes = [0] * (len(BATCH_BUCKETS) + 1)  # batches per BATCH_BUCKETS bucket, +Inf last

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
            self.batch_sizes[min((n - 1).bit_length(), len(BATCH_BUCKETS))] += 1  # bucket le 2**k (per batch)
            self.busy_s += busy_s

    def wait_begins(self) -> None:
        """The serving loop waits for a batch with nothing on the device (one thread calls these two)."""
        self.idle_since = time.monotonic()

    def wait_ends(self) -> None:
        since, self.idle_since = self.idle_since, None
        if since is not None:
            self.idle_s = (self.idle_s or 0.0) + time.monotonic() - since

    def _idle(self) -> float | None:
        since = self.idle_since
        if self.idle_s is None and since is None:
            return None
        return round((self.idle_s or 0.0) + (time.monotonic() - since if since is not None else 0.0), 4)

    def snapshot(self) -> dict:
        with self.lock:
            avg = self.items_in_batches / self.total_batches if self.total_batches else 0.0
            return {
                "total_requests": self.total_requests,
                "total_batches": self.total_batches,
                "avg_batch_size": round(avg, 3),
                "errors": self.errors,
                "oom_events": self.oom_events,
                "isolated_batches": self.isolated_batches,
                "restarts": self.restarts,
                "setup_kills": self.setup_kills,
                "restart_s_total": round(self.restart_s_total, 4),
                "last_restart": dict(self.last_restart),
                "busy_s": round(self.busy_s, 4),
                "idle_s": self._idle(),
                "media_s": round(self.media_s, 4),
                "rtf": round(self.busy_s / self.media_s, 5) if self.media_s else None,
                "progress": self.progress,
                "stages": {k: w.summary() for k, w in list(self.stages.items())},
            }
