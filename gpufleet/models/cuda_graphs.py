"""CUDA graphs of a model's forward, captured per batch bucket: one replay instead of hundreds of launches.

A batch of ``n`` items runs in the graph of the smallest bucket ≥ ``n`` (the rows past ``n`` hold stale
inputs; their outputs are dropped). Each bucket has two captures with their own static input/output
buffers, used in turn, so the next batch's host→device copy can land while the previous one computes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gpufleet.devices.locks import CUDA_SETUP_LOCK
from gpufleet.models.buckets import DEFAULT_BUCKETS, bucket_for

__all__ = ["DEFAULT_BUCKETS", "Captured", "GraphCache"]

log = logging.getLogger(__name__)

class Captured:
    """One captured graph with its static input ``x`` and static output ``y``."""

    __slots__ = ("graph", "x", "y")

    def __init__(self, graph: torch.cuda.CUDAGraph, x: torch.Tensor, y: Any) -> None:
        self.graph, self.x, self.y = graph, x, y


class GraphCache:
    """Captures ``forward`` lazily per (bucket, item shape, dtype, buffer) on ``device``; replays it after."""

    def __init__(self, forward: Callable[[torch.Tensor], Any], device: torch.device,
                 buckets: Sequence[int] | None = None, buffers: int = 2) -> None:
        self.forward = forward
        self.device = device
        self.buckets = tuple(sorted(set(buckets or DEFAULT_BUCKETS)))
        self.buffers = buffers
        self._graphs: dict[tuple, Captured] = {}
        self._pool = torch.cuda.graph_pool_handle()  # one memory pool: replays are serialised on one stream
        self._turn = 0
        self._stream: torch.cuda.Stream | None = None  # capture stream on ``device`` (made on first capture)

    def bucket(self, n: int) -> int | None:
        """The bucket for ``n`` items, or ``None`` past the largest (run eagerly)."""
        return bucket_for(n, self.buckets) if n <= self.buckets[-1] else None

    def captured(self, n: int, shape: Sequence[int], dtype: torch.dtype) -> int | None:
        """The smallest bucket ≥ ``n`` whose graphs (every buffer) are captured for this item shape and dtype;
        ``None`` when none is. While other buckets are still being captured elsewhere, a batch can run padded
        in one of these instead of waiting for its own capture."""
        key = tuple(shape)
        for b in self.buckets:
            if b >= n and all((b, key, dtype, s) in self._graphs for s in range(self.buffers)):
                return b
        return None

    def get(self, bucket: int, shape: torch.Size, dtype: torch.dtype) -> Captured:
        """The next buffer's graph for this bucket and item shape, capturing it on first use."""
        slot = self._turn
        self._turn = (slot + 1) % self.buffers
        return self._ensure((bucket, tuple(shape), dtype, slot))

    def _ensure(self, key: tuple) -> Captured:
        cap = self._graphs.get(key)
        if cap is None:
            with CUDA_SETUP_LOCK:  # a warm-up thread may be capturing this very key (finish_warmup)
                cap = self._graphs.get(key)
                if cap is None:
                    cap = self._graphs[key] = self._capture(key[0], key[1], key[2])
        return cap

    def warm(self, sizes: Sequence[int], shape: Sequence[int], dtype: torch.dtype) -> None:
        """Capture every buffer of the buckets holding ``sizes`` now rather than on the first batch."""
        for n in sizes:
            b = self.bucket(n)
            if b is not None:
                for slot in range(self.buffers):
                    self._ensure((b, tuple(torch.Size(shape)), dtype, slot))

    def __len__(self) -> int:
        return len(self._graphs)

    def _capture(self, bucket: int, shape: tuple, dtype: torch.dtype) -> Captured:
        with CUDA_SETUP_LOCK, torch.cuda.device(self.device):  # one capture at a time per process
            return self._capture_locked(bucket, shape, dtype)

    def _capture_locked(self, bucket: int, shape: tuple, dtype: torch.dtype) -> Captured:
        dev = self.device
        if dtype.is_floating_point:
            x = torch.randn((bucket, *shape), device=dev).to(dtype)
        else:
            x = torch.randint(0, 100, (bucket, *shape), device=dev).to(dtype)
        torch.cuda.synchronize(dev)
        # Our own capture stream on this device, shared by warm-up and capture: torch.cuda.graph's default
        # is one process-wide stream made on the first device that captured (cuda:0), so a worker on cuda:1
        # captured on a cuda:0 stream and cuDNN's per-stream workspace was allocated mid-capture
        # ("operation not permitted when stream is capturing", seen on 2x H200).
        if self._stream is None:
            self._stream = torch.cuda.Stream(dev)
        with torch.inference_mode(), torch.cuda.stream(self._stream):
            for _ in range(3):  # warm-up outside capture: cuDNN autotuning, workspaces, lazy inits
                self.forward(x)
        torch.cuda.synchronize(dev)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other workers' threads may serve (not capture) while this one captures.
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool, stream=self._stream,
                                                      capture_error_mode="thread_local"):
            y = self.forward(x)
        torch.cuda.synchronize(dev)
        log.info("captured a CUDA graph for batch bucket %d, items %s %s on %s", bucket, shape, dtype, dev)
        return Captured(graph, x, y)
