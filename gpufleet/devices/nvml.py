"""Thin, safe NVML helpers (nvidia-ml-py): every function returns ``None``/``False`` instead of raising.

NVML is optional at run time: machines without a driver (CI, laptops) simply get no uuids or utilisation.
NVML indices are physical (nvidia-smi) indices; NVML ignores ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "device_count",
    "driver_loaded",
    "driver_version",
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


def driver_loaded() -> bool:
    """True when this host has an NVIDIA driver (NVML loads, or its control device exists): CUDA may work here;
    False means no CUDA device, without importing torch to find out."""
    return nvml_available() or os.path.exists("/dev/nvidiactl")


def driver_version() -> str | None:
    """The NVIDIA driver's version (``"580.159.04"``), or None without NVML."""
    nv = _nvml()
    if nv is None:
        return None
    try:
        return _str(nv.nvmlSystemGetDriverVersion())
    except Exception:
        return None


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
    if nv is None:
        return out
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


def _queries(nv: Any) -> dict[str, Any]:
    """Counter name → function(handle) for every reading :func:`gpu_utilization` reports."""
    return {
        "util_gpu": lambda h: float(nv.nvmlDeviceGetUtilizationRates(h).gpu),
        "util_mem": lambda h: float(nv.nvmlDeviceGetUtilizationRates(h).memory),
        "memory_used_gb": lambda h: nv.nvmlDeviceGetMemoryInfo(h).used / 1e9,
        "memory_total_gb": lambda h: nv.nvmlDeviceGetMemoryInfo(h).total / 1e9,
        "temperature_c": lambda h: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
        "power_w": lambda h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
        "power_limit_w": lambda h: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
        "sm_clock_mhz": lambda h: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
        "mem_clock_mhz": lambda h: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
        "nvdec_util": lambda h: float(nv.nvmlDeviceGetDecoderUtilization(h)[0]),
        "nvenc_util": lambda h: float(nv.nvmlDeviceGetEncoderUtilization(h)[0]),
        "processes": lambda h: float(len(nv.nvmlDeviceGetComputeRunningProcesses(h))),
    }


def gpu_utilization(physical_index: int | None) -> dict[str, float | None] | None:
    """Current readings of one physical GPU, or None when NVML or the GPU is unavailable.

    Keys: ``util_gpu``, ``util_mem`` (percent), ``memory_used_gb``, ``memory_total_gb``, ``temperature_c``,
    ``power_w``, ``power_limit_w``, ``sm_clock_mhz``, ``mem_clock_mhz``, ``nvdec_util``, ``nvenc_util``
    (percent) and ``processes`` (compute processes on the GPU); a key is None when the GPU does not report it
    (e.g. utilisation under MIG, or no encoder on an H100).
    """
    nv = _nvml()
    if nv is None or physical_index is None:
        return None
    try:
        handle = nv.nvmlDeviceGetHandleByIndex(int(physical_index))
    except Exception as exc:
        log.debug("no NVML handle for GPU %s: %s", physical_index, exc)
        return None
    out: dict[str, float | None] = {}
    for key, query in _queries(nv).items():
        try:  # each counter on its own: one unsupported counter must not hide the others
            out[key] = query(handle)
        except Exception:
            out[key] = None
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
    return _control_live(Path(pipe) / "control")


def _control_live(path: Path) -> bool:
    """Whether a daemon listens on its control endpoint. The file outlives the daemon (seen after ``quit`` on an
    H200), so a socket must accept a connection and a FIFO must have a reader; another kind of file counts."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if stat.S_ISSOCK(mode):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            try:
                sock.connect(str(path))
            except OSError as exc:  # refused: nobody listens; no permission: another user's daemon
                return exc.errno in (errno.EACCES, errno.EPERM)
        return True
    if stat.S_ISFIFO(mode):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: no reader; no permission: another user's daemon
            return exc.errno in (errno.EACCES, errno.EPERM)
        os.close(fd)
        return True
    return True


def visible_devices_env() -> str | None:
    """The raw ``CUDA_VISIBLE_DEVICES`` value, or None when unset."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")
