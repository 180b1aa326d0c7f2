"""Batch buckets: the fixed batch sizes a model is prepared for (CUDA graphs, warm-up), and which one a batch uses."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["DEFAULT_BUCKETS", "bucket_for"]

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def bucket_for(n: int, buckets: Sequence[int] | None) -> int:
    """The smallest bucket that holds ``n`` items (``n`` itself without buckets or past the largest).

    >>> bucket_for(5, (1, 2, 4, 8))
    8
    """
    if not buckets:
        return n
    i = bisect.bisect_left(buckets, n)
    return buckets[i] if i < len(buckets) else n
