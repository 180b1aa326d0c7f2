"""NVIDIA MPS (Multi-Process Service): is the daemon running, start it, stop it.

MPS lets the CUDA work of several processes on one GPU run concurrently instead of time-sliced, which is
what makes several processes per GPU (``workers_per_device`` with ``backend="process"``) pay off for small
models. These helpers wrap ``nvidia-cuda-mps-control``; without it they raise a ``DeviceError`` that says so.

>>> import gpufleet.devices.mps as mps
>>> isinstance(mps.status()["running"], bool)
True
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from gpufleet.devices import nvml
from gpufleet.devices.device import Device
from gpufleet.errors import DeviceError

__all__ = ["CONTROL", "binary", "pool_mps_status", "start", "status", "stop"]

log = logging.getLogger(__name__)

CONTROL = "nvidia-cuda-mps-control"


def binary() -> str | None:
    """Path of ``nvidia-cuda-mps-control``, or None."""
    return shutil.which(CONTROL)


def _require() -> str:
    path = binary()
    if path is None:
        raise DeviceError(f"{CONTROL} not found on PATH: MPS needs the NVIDIA driver's utilities "
                          "(Linux, Volta or newer GPU)")
    return path


def _query(path: str, command: str, timeout: float = 10.0) -> str:
    """Send one command to the running daemon's control pipe."""
    try:
        done = subprocess.run([path], input=command + "\n", capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceError(f"{CONTROL} {command!r} failed: {exc}") from exc
    if done.returncode != 0:
        raise DeviceError(f"{CONTROL} {command!r} failed (exit {done.returncode}): "
                          f"{(done.stderr or done.stdout).strip()}")
    return done.stdout.strip()


def status(*, require_binary: bool = False) -> dict[str, Any]:
    """``{"binary": path|None, "running": bool, "pipe_dir": str, "servers": [pid, …]}``.

    ``require_binary=True`` raises ``DeviceError`` when ``nvidia-cuda-mps-control`` is absent.
    """
    path = _require() if require_binary else binary()
    running = nvml.mps_running()
    out: dict[str, Any] = {"binary": path, "running": running,
                           "pipe_dir": os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps",
                           "servers": []}
    if running and path is not None:
        try:
            out["servers"] = [s for s in _query(path, "get_server_list", timeout=5).split() if s.isdigit()]
        except DeviceError as exc:
            log.debug("MPS server list unavailable: %s", exc)
    return out


def start(*, wait_s: float = 5.0) -> dict[str, Any]:
    """Start the daemon (``nvidia-cuda-mps-control -d``) unless one runs; returns :func:`status`."""
    path = _require()
    if nvml.mps_running():
        return status()
    try:
        done = subprocess.run([path, "-d"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceError(f"{CONTROL} -d failed: {exc}") from exc
    if done.returncode != 0:
        raise DeviceError(f"{CONTROL} -d failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()}"
                          " (starting MPS may need root, or CUDA_MPS_PIPE_DIRECTORY/CUDA_MPS_LOG_DIRECTORY you "
                          "can write)")
    end = time.monotonic() + wait_s
    while not nvml.mps_running() and time.monotonic() < end:
        time.sleep(0.1)
    return status()


def stop(*, wait_s: float = 10.0) -> dict[str, Any]:
    """Ask the daemon to quit (``echo quit | nvidia-cuda-mps-control``); returns :func:`status`."""
    path = _require()
    if not nvml.mps_running():
        return status()
    _query(path, "quit")
    end = time.monotonic() + wait_s
    while nvml.mps_running() and time.monotonic() < end:
        time.sleep(0.1)
    return status()


def pool_mps_status(mode: str, devices: Sequence[Device]) -> dict[str, Any]:
    """What a process pool reports about MPS (``Pool(mps=…)``): ``"auto"`` notes whether the daemon runs
    (CUDA processes started while it runs use it), ``"on"`` requires it, ``"off"`` does not look."""
    cuda = any(d.is_cuda for d in devices)
    if mode == "off" or not cuda:
        return {"mode": mode, "running": False, "used": False}
    running = nvml.mps_running()
    if mode == "on" and not running:
        raise DeviceError("mps='on' but no MPS daemon runs; start one with `gpufleet mps start` "
                          f"(or `{CONTROL} -d`), or use mps='auto'")
    if running:
        log.info("MPS daemon running: worker processes share each GPU concurrently")
    else:
        log.info("no MPS daemon: worker processes on one GPU are time-sliced (see `gpufleet mps start`)")
    return {"mode": mode, "running": running, "used": running}
