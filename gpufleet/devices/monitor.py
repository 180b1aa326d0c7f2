"""``Monitor``: samples every device at a fixed period into a ring buffer of recent readings.

GPUs are read through NVML (memory, SM and memory utilisation, temperature, power and its limit, clocks,
NVDEC/NVENC utilisation, compute processes); CPU devices, which stand in for GPUs on machines without one,
report the host's CPU utilisation and memory. Without NVML a GPU reports only what torch knows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from gpufleet.devices import nvml
from gpufleet.devices.device import Device

__all__ = ["Monitor", "host_reading"]

log = logging.getLogger(__name__)


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as fh:
            fields = [float(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def _meminfo_gb() -> tuple[float | None, float | None]:
    try:
        info = {}
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, value = line.split(":", 1)
                info[key] = float(value.split()[0]) * 1024 / 1e9
        return info["MemTotal"] - info.get("MemAvailable", info.get("MemFree", 0.0)), info["MemTotal"]
    except (OSError, KeyError, ValueError):
        return None, None


def host_reading(previous: tuple[float, float] | None) -> tuple[dict[str, float | None], tuple[float, float] | None]:
    """The host's CPU utilisation since ``previous`` (from the last call) and memory, as a device reading."""
    now = _cpu_times()
    util = None
    if now is not None and previous is not None and now[1] > previous[1]:
        util = 100.0 * (now[0] - previous[0]) / (now[1] - previous[1])
    used, total = _meminfo_gb()
    return {"util_gpu": util, "util_mem": None, "memory_used_gb": used, "memory_total_gb": total,
            "temperature_c": None, "power_w": None}, now


class Monitor:
    """Sample ``devices`` every ``period_s`` seconds on a daemon thread; keep the last ``history`` readings.

    >>> m = Monitor([Device(index=0, kind="cpu", name="CPU")], period_s=0.5)
    >>> m.sample()[0]["device"]
    'cpu:0'
    """

    def __init__(self, devices: Sequence[Device], *, period_s: float = 1.0, history: int = 300) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self.devices = list(devices)
        self.period_s = period_s
        self._history: deque[list[dict[str, Any]]] = deque(maxlen=history)
        self._cpu_prev = _cpu_times()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def sample(self) -> list[dict[str, Any]]:
        """Read every device now; the readings are also appended to the history."""
        t = time.time()
        host, self._cpu_prev = host_reading(self._cpu_prev)
        readings = []
        for d in self.devices:
            values: dict[str, Any] | None = None
            if d.is_cuda:
                values = nvml.gpu_utilization(d.physical_index if d.physical_index is not None else d.index)
                if values is None:
                    values = {"memory_total_gb": d.memory_gb or None}
            else:
                values = host
            readings.append({"t": t, "device": d.label, "index": d.index, "uuid": d.uuid, "name": d.name,
                             **values})
        with self._lock:
            self._history.append(readings)
        return readings

    def latest(self) -> list[dict[str, Any]]:
        """The most recent readings (sampling once if there are none yet)."""
        with self._lock:
            if self._history:
                return self._history[-1]
        return self.sample()

    def history(self) -> list[list[dict[str, Any]]]:
        """Every kept sample, oldest first; each is one reading per device."""
        with self._lock:
            return list(self._history)

    def start(self) -> Monitor:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="gpufleet-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a monitoring hiccup must never stop serving
                log.debug("device sampling failed", exc_info=True)
            self._stop.wait(self.period_s)

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
