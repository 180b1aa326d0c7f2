"""Recognising and recovering from device out-of-memory errors."""

from __future__ import annotations

from gpufleet.devices.device import Device

__all__ = ["empty_cache", "is_oom"]


def is_oom(exc: BaseException) -> bool:
    """True for ``torch.cuda.OutOfMemoryError`` and other frameworks' out-of-memory errors."""
    name = type(exc).__name__
    if name in ("OutOfMemoryError", "MemoryError"):
        return True
    msg = str(exc).lower()
    return "out of memory" in msg and ("cuda" in msg or "alloc" in msg or name == "RuntimeError")


def empty_cache(device: Device) -> None:
    """Release cached device memory after an out-of-memory error (no-op on CPU devices)."""
    if not device.is_cuda:
        return
    import torch

    with torch.cuda.device(device.index):
        torch.cuda.empty_cache()
