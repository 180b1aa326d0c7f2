"""Recognising device errors: out of memory (recoverable: free the cache, smaller batches) and sticky CUDA
errors (not recoverable in the process)."""

from __future__ import annotations

from gpufleet.devices.device import Device

__all__ = ["empty_cache", "is_oom", "is_sticky_cuda_error"]


def is_oom(exc: BaseException) -> bool:
    """True for ``torch.cuda.OutOfMemoryError`` and other frameworks' out-of-memory errors."""
    name = type(exc).__name__
    if name in ("OutOfMemoryError", "MemoryError"):
        return True
    msg = str(exc).lower()
    return "out of memory" in msg and ("cuda" in msg or "alloc" in msg or name == "RuntimeError")


_STICKY = ("illegal memory access", "device-side assert", "unspecified launch failure", "cuda error",
           "illegal instruction", "misaligned address", "cudaerror", "cublas_status_execution_failed")


def is_sticky_cuda_error(exc: BaseException) -> bool:
    """True for CUDA errors that poison the context (illegal address, device-side assert, launch failure…):
    every later kernel in that process fails too, so retrying there is pointless."""
    if is_oom(exc):
        return False
    if type(exc).__name__ in ("AcceleratorError", "CudaError", "CUDARuntimeError"):
        return True
    msg = str(exc).lower()
    return any(s in msg for s in _STICKY)


def empty_cache(device: Device) -> None:
    """Release cached device memory after an out-of-memory error (no-op on CPU devices)."""
    if not device.is_cuda:
        return
    import torch

    with torch.cuda.device(device.index):
        torch.cuda.empty_cache()
