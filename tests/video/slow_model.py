"""Slow stand-in models for interrupt and balancing tests, loaded by path (``tests/video/slow_model.py:Slow``)."""

from __future__ import annotations

import time

import numpy as np

from gpufleet.models.base import Model


class Slow(Model):
    """Sleeps 50 ms per batch; one fixed box per frame."""

    def predict(self, batch: list) -> list:
        time.sleep(0.05)
        return [[{"box": [4, 4, 40, 20], "score": 1.0}] for _ in batch]


class SlowMean(Model):
    """Sleeps 20 ms per batch; each frame's mean pixel value (its result depends on what was decoded)."""

    def predict(self, batch: list) -> list:
        time.sleep(0.02)
        return [round(float(np.asarray(x, dtype=np.float64).mean()), 6) for x in batch]
