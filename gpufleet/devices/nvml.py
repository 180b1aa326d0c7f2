"""Thin, safe NVML helpers (nvidia-ml-py): every function returns ``None``/``False`` instead of raising.

NVML is optional at run time: machines without a driver (CI, laptops) simply get no uuids or utilisation.
NVML indices are physical (nvidia-smi) indices; NVML ignores ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "device_count",
    "gpu_utilization",
    "gpu_uuids",
    "mig_parents",
    "mps_running",
    "nvml_available",
    "visible_devices_env",
]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, Any] = {"tried": False, "module": None}
_MPS_NAMES = ("nvidia-cuda-mps-control", "nvidia-cuda-mps-server")


def _nvml() -> Any | None:
    """The initialised ``pynvml`` module, or None; NVML is initialised once per process."""
    # A lock because the first call may race between worker threads; later calls only read the cache.
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            try:
                import pynvml

                pynvml.nvmlInit()
                _state["module"] = pynvml
            except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
                log.debug("NVML unavailable: %s", exc)
        return _state["module"]


def _str(value: Any) -> str:
    """NVML strings are ``bytes`` in old pynvml versions and ``str`` in new ones."""
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_available() -> bool:
    """True when NVML could be loaded and initialised."""
    return _nvml() is not None


def device_count() -> int | None:
    """Number of physical GPUs NVML sees, or None."""
    nv = _nvml()
    if nv is None:
        return None
    try:
        return int(nv.nvmlDeviceGetCount())
    except Exception as exc:
        log.debug("nvmlDeviceGetCount failed: %s", exc)
        return None


def gpu_uuids() -> list[str] | None:
    """UUIDs (``"GPU-…"``) of the physical GPUs, by physical index, or None."""
    nv = _nvml()
    count = device_count()
    if nv is None or count is None:
        return None
    try:
        return [_str(nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
    except Exception as exc:
        log.debug("reading GPU uuids failed: %s", exc)
        return None


def mig_parents() -> dict[str, int]:
    """Map each MIG device UUID (``"MIG-…"``) to the physical index of its GPU; empty without MIG or NVML."""
    nv = _nvml()
    out: dict[str, int] = {}
    for i in range(device_count() or 0):
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(i)
            slots = int(nv.nvmlDeviceGetMaxMigDeviceCount(handle))
        except Exception:
            continue  # not MIG capable
        for j in range(slots):
            try:
                mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
                out[_str(nv.nvmlDeviceGetUUID(mig))] = i
            except Exception:
                continue  # empty slot
    return out


def gpu_utilization(physical_index: int | None) -> dict[str, float | None] | None:
    """Current utilisation of one physical GPU, or None when NVML or the GPU is unavailable.

    Keys: ``util_gpu``, ``util_mem`` (percent), ``memory_used_gb``, ``memory_total_gb``, ``temperature_c``,
    ``power_w``; a key is None when the GPU does not report it (e.g. utilisation under MIG).
    """
    nv = _nvml()
    if nv is None or physical_index is None:
        return None
    try:
        handle = nv.nvmlDeviceGetHandleByIndex(int(physical_index))
    except Exception as exc:
        log.debug("no NVML handle for GPU %s: %s", physical_index, exc)
        return None
    out: dict[str, float | None] = dict.fromkeys(
        ("util_gpu", "util_mem", "memory_used_gb", "memory_total_gb", "temperature_c", "power_w")
    )
    # Each query on its own: one unsupported counter must not hide the others.
    try:
        rates = nv.nvmlDeviceGetUtilizationRates(handle)
        out["util_gpu"], out["util_mem"] = float(rates.gpu), float(rates.memory)
    except Exception:
        pass
    try:
        mem = nv.nvmlDeviceGetMemoryInfo(handle)
        out["memory_used_gb"], out["memory_total_gb"] = mem.used / 1e9, mem.total / 1e9
    except Exception:
        pass
    try:
        out["temperature_c"] = float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
    except Exception:
        pass
    try:
        out["power_w"] = nv.nvmlDeviceGetPowerUsage(handle) / 1000.0
    except Exception:
        pass
    return out


def mps_running(*, proc_root: str | os.PathLike[str] = "/proc", pipe_dir: str | None = None) -> bool:
    """True when an MPS daemon (``nvidia-cuda-mps-control`` / ``-server``) runs or its control pipe exists.

    The pipe check (``$CUDA_MPS_PIPE_DIRECTORY``, default ``/tmp/nvidia-mps``) catches a daemon running outside
    this container's process namespace.
    """
    try:
        for entry in Path(proc_root).iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
            except OSError:
                continue  # process exited or not readable
            if os.path.basename(cmd) in _MPS_NAMES:
                return True
    except OSError as exc:
        log.debug("cannot list %s: %s", proc_root, exc)
    pipe = pipe_dir or os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps"
    try:
        return (Path(pipe) / "control").exists()
    except OSError:
        return False


def visible_devices_env() -> str | None:
    """The raw ``CUDA_VISIBLE_DEVICES`` value, or None when unset."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")
