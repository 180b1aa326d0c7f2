"""GraphCache's choice of a bucket while others are still being captured (no GPU needed: no capture runs)."""

from __future__ import annotations

import torch

from gpufleet.models.cuda_graphs import GraphCache


def _cache(captured: list[int], buffers: int = 2) -> GraphCache:
    cache = GraphCache.__new__(GraphCache)  # __init__ needs CUDA (a graph pool); the choice does not
    cache.buckets, cache.buffers = (1, 2, 4, 8, 16, 32, 64), buffers
    cache._graphs = {(b, (3, 8, 8), torch.uint8, s): object() for b in captured for s in range(buffers)}
    return cache


def test_a_batch_runs_padded_in_the_smallest_captured_bucket_that_holds_it() -> None:
    cache = _cache([64])  # a replacement worker captured only its largest bucket so far
    assert cache.captured(1, (3, 8, 8), torch.uint8) == 64
    assert cache.captured(64, (3, 8, 8), torch.uint8) == 64
    cache = _cache([8, 64])
    assert cache.captured(3, (3, 8, 8), torch.uint8) == 8
    assert cache.captured(9, (3, 8, 8), torch.uint8) == 64


def test_nothing_captured_for_that_shape_dtype_or_every_buffer_means_none() -> None:
    cache = _cache([64])
    assert cache.captured(1, (3, 16, 16), torch.uint8) is None
    assert cache.captured(1, (3, 8, 8), torch.float16) is None
    cache = _cache([64])
    del cache._graphs[(64, (3, 8, 8), torch.uint8, 1)]  # one buffer still being captured
    assert cache.captured(1, (3, 8, 8), torch.uint8) is None
