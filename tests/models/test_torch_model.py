"""TorchModel host-side helpers that run on CPU: stacking a batch into a staging buffer."""

from __future__ import annotations

import torch


def test_stack_words_copies_a_batch_in_one_call_or_declines() -> None:
    from gpufleet.models.torch_model import _stack_words

    g = torch.Generator().manual_seed(0)
    items = [torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8, generator=g) for _ in range(5)]
    buf = torch.zeros((8, 3, 224, 224), dtype=torch.uint8)
    assert _stack_words(items, buf, 5)
    assert torch.equal(buf[:5], torch.stack(items)) and not buf[5:].any()
    floats = [torch.randn(4, 6, generator=g) for _ in range(3)]
    fbuf = torch.empty((3, 4, 6))
    assert _stack_words(floats, fbuf, 3) and torch.equal(fbuf, torch.stack(floats))
    odd = [torch.zeros(3, 5, 5, dtype=torch.uint8)] * 2  # 75 bytes: not whole words
    assert not _stack_words(odd, torch.empty((2, 3, 5, 5), dtype=torch.uint8), 2)
    big = [torch.zeros(3, 512, 512, dtype=torch.uint8)] * 2  # 768 KB: a parallel copy, left to numpy
    assert not _stack_words(big, torch.empty((2, 3, 512, 512), dtype=torch.uint8), 2)
    strided = [torch.zeros(224, 224, 3, dtype=torch.uint8).permute(2, 0, 1)] * 2
    assert not _stack_words(strided, torch.empty((2, 3, 224, 224), dtype=torch.uint8), 2)
