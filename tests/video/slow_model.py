"""A slow stand-in model for interrupt tests, loaded by path (``tests/video/slow_model.py:Slow``)."""

from __future__ import annotations

import time

from gpufleet.models.base import Model


class Slow(Model):
    """Sleeps 50 ms per batch; one fixed box per frame."""

    def predict(self, batch: list) -> list:
        time.sleep(0.05)
        return [[{"box": [4, 4, 40, 20], "score": 1.0}] for _ in batch]
