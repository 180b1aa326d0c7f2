"""Prometheus metrics of one app, in its own ``CollectorRegistry`` (several apps per process never clash).

Request counters and latency histograms are updated per request; the engine's figures (stage latencies,
queue depth, batch-size and queue-wait histograms per device), the process's (``process_*``) and NVML's GPU
memory/utilisation are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gpufleet.devices.nvml import gpu_utilization

if TYPE_CHECKING:
    from gpufleet.engine import Pool

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (.001, .0025, .005, .01, .025, .05, .075, .1, .25, .5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _PoolCollector(Collector):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.snapshot: dict | None = None  # the pool's stats() taken by the scrape (awaited for a remote pool)

    def collect(self) -> Iterator[Metric]:
        stats = self.snapshot if self.snapshot is not None else self.pool.stats()
        labels = ["device", "gpu_id"]
        depth = GaugeMetricFamily("gpufleet_queue_depth", "Items waiting in the device's batch queues", labels=labels)
        outstanding = GaugeMetricFamily("gpufleet_outstanding_items", "Items routed to the device, not yet answered",
                                        labels=labels)
        avg = GaugeMetricFamily("gpufleet_avg_batch_size", "Mean items per batch on the device", labels=labels)
        reqs = CounterMetricFamily("gpufleet_device_items", "Items served by the device", labels=labels)
        batches = CounterMetricFamily("gpufleet_device_batches", "Batches run by the device", labels=labels)
        errors = CounterMetricFamily("gpufleet_device_errors", "Items that failed on the device", labels=labels)
        busy = CounterMetricFamily("gpufleet_device_busy_seconds", "Seconds the device spent in predict",
                                   labels=labels)
        idle = CounterMetricFamily("gpufleet_device_idle_seconds", "Seconds the device's serving loop waited for "
                                   "work with nothing on the device (thread backend)", labels=labels)
        media = CounterMetricFamily("gpufleet_media_seconds", "Seconds of audio/video the device's model produced "
                                    "or consumed (models with output_seconds)", labels=labels)
        rtf = GaugeMetricFamily("gpufleet_real_time_factor", "Device-busy seconds per media second since start "
                                "(below 1: faster than real time); over a window: rate(busy) / rate(media)",
                                labels=labels)
        for d in stats["per_gpu_stats"]:
            lv = [str(d["device"]), str(d["gpu_id"])]
            depth.add_metric(lv, d["current_queue_depth"])
            outstanding.add_metric(lv, d["outstanding"])
            avg.add_metric(lv, d["avg_batch_size"])
            reqs.add_metric(lv, d["total_requests"])
            batches.add_metric(lv, d["total_batches"])
            errors.add_metric(lv, d["errors"])
            busy.add_metric(lv, d.get("busy_s", 0.0))
            if d.get("idle_s") is not None:
                idle.add_metric(lv, d["idle_s"])
            if d.get("media_s"):
                media.add_metric(lv, d["media_s"])
            if d.get("rtf") is not None:
                rtf.add_metric(lv, d["rtf"])
        yield from (depth, outstanding, avg, reqs, batches, errors, busy, idle, media, rtf)
        sizes = HistogramMetricFamily("gpufleet_batch_size", "Items per batch run on the device", labels=labels)
        wait = HistogramMetricFamily("gpufleet_queue_wait_seconds", "Time an item waited for its batch",
                                     labels=labels)
        for h in stats.get("histograms", ()):
            lv = [str(h["device"]), str(h["gpu_id"])]
            for hist, key in ((sizes, "batch_size"), (wait, "queue_wait_seconds")):
                one = h[key]
                cum = one["cumulative"]
                buckets = [(_le(b), c) for b, c in zip(one["le"], cum)] + [("+Inf", cum[-1])]
                hist.add_metric(lv, buckets, one["sum"])
        yield from (sizes, wait)
        yield GaugeMetricFamily("gpufleet_pool_outstanding", "Items admitted and not yet answered",
                                value=stats["queue_depth"])
        yield GaugeMetricFamily("gpufleet_pool_ready", "1 when the pool takes work", value=int(self.pool.ready))
        # Engine stage latencies over its recent window (queue_wait, preprocess, predict, postprocess, e2e).
        q = GaugeMetricFamily("gpufleet_stage_latency_seconds", "Recent per-stage latency percentiles",
                              labels=["stage", "quantile"])
        mean = GaugeMetricFamily("gpufleet_stage_latency_mean_seconds", "Recent per-stage mean latency",
                                 labels=["stage"])
        for stage, s in stats.get("stages", {}).items():
            mean.add_metric([stage], s.get("mean_ms", 0.0) / 1e3)
            for key, quantile in (("p50_ms", "0.5"), ("p90_ms", "0.9"), ("p99_ms", "0.99")):
                if key in s:
                    q.add_metric([stage, quantile], s[key] / 1e3)
        yield q
        yield mean
        gauges = {key: (GaugeMetricFamily(name, doc, labels=[*labels, "uuid"]), scale)
                  for key, (name, doc, scale) in _GPU_SERIES.items()}
        for dev in self.pool.devices:
            if not dev.is_cuda:
                continue
            u = gpu_utilization(dev.physical_index if dev.physical_index is not None else dev.index)
            if not u:
                continue
            lv = [dev.label, str(dev.index), dev.uuid]
            for key, (family, scale) in gauges.items():
                if u.get(key) is not None:
                    family.add_metric(lv, u[key] * scale)
        yield from (family for family, _ in gauges.values())


# NVML reading (gpufleet.devices.nvml.gpu_utilization key) -> (metric, help, scale to base units)
_GPU_SERIES = {
    "memory_used_gb": ("gpufleet_gpu_memory_used_bytes", "GPU memory in use (NVML)", 1e9),
    "memory_total_gb": ("gpufleet_gpu_memory_total_bytes", "GPU memory (NVML)", 1e9),
    "util_gpu": ("gpufleet_gpu_utilization_ratio", "Fraction of time a kernel ran (NVML)", 0.01),
    "util_mem": ("gpufleet_gpu_memory_utilization_ratio", "Fraction of time memory was read or written", 0.01),
    "temperature_c": ("gpufleet_gpu_temperature_celsius", "GPU temperature", 1.0),
    "power_w": ("gpufleet_gpu_power_watts", "Power draw", 1.0),
    "power_limit_w": ("gpufleet_gpu_power_limit_watts", "Enforced power limit", 1.0),
    "sm_clock_mhz": ("gpufleet_gpu_sm_clock_hertz", "SM clock", 1e6),
    "mem_clock_mhz": ("gpufleet_gpu_memory_clock_hertz", "Memory clock", 1e6),
    "nvdec_util": ("gpufleet_gpu_decoder_utilization_ratio", "NVDEC busy fraction", 0.01),
    "nvenc_util": ("gpufleet_gpu_encoder_utilization_ratio", "NVENC busy fraction", 0.01),
    "processes": ("gpufleet_gpu_processes", "Compute processes on the GPU", 1.0),
}


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() and bound >= 1 else repr(float(bound))


class Metrics:
    """Request counters/histograms plus the pool collector, all in one private registry."""

    def __init__(self, pool: Pool) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("gpufleet_http_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("gpufleet_http_request_duration_seconds", "HTTP request latency by endpoint",
                                 ["endpoint"], buckets=_BUCKETS, registry=self.registry)
        self._pool_collector = _PoolCollector(pool)
        self.registry.register(self._pool_collector)
        # process_* (CPU seconds, resident memory, open fds, start time) of the process that renders /metrics:
        # the engine process, or with --http-workers N the front end that answered the scrape. Read at scrape.
        ProcessCollector(registry=self.registry)
        self._counters: dict[tuple[str, int], Counter] = {}
        self._hists: dict[str, Histogram] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        # Label lookups cost more than the increment: cache the children.
        key = (endpoint, status)
        c = self._counters.get(key)
        if c is None:
            c = self._counters[key] = self.requests.labels(endpoint, str(status))
        c.inc()
        h = self._hists.get(endpoint)
        if h is None:
            h = self._hists[endpoint] = self.latency.labels(endpoint)
        h.observe(seconds)

    def render(self, stats: dict | None = None) -> bytes:
        """The exposition text; ``stats`` is the pool's ``stats()`` when the caller already has it."""
        self._pool_collector.snapshot = stats
        try:
            return generate_latest(self.registry)
        finally:
            self._pool_collector.snapshot = None
