"""Where a model's ``preprocess`` runs: in the submitting thread (or on a front end's event loop), or on a
pool thread — decided by one measured rule, for the pool and for HTTP front ends alike."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["INLINE_PRE_S", "PreprocessPlacement"]

# A preprocess cheaper than this (mean per item) runs inline: handing an item to a thread costs ~20-50 us of
# GIL-holding work per item, which capped 1 and 2 GPUs alike at ~13k items/s on 2x H200 for the classifier's
# preprocess of ready uint8 tensors.
INLINE_PRE_S = 30e-6
_EWMA = 0.1  # weight of the newest sample in the estimate
_MIN_SAMPLES = 16  # measured on threads before it may run inline


class PreprocessPlacement:
    """Times each preprocess and says whether the next one should run inline (:attr:`inline`).

    One slow item (a JPEG among tensors) sends the next ones back to threads at once: the estimate is a
    moving mean. ``keep`` samples are kept for stats (:meth:`samples`).
    """

    def __init__(self, keep: int = 4096) -> None:
        self.inline = False
        self._lock = threading.Lock()
        self._mean = 0.0
        self._n = 0
        self._samples: deque[float] = deque(maxlen=keep)

    def run(self, preprocess: Callable[[Any], Any], item: Any) -> Any:
        """``preprocess(item)``, timed (also when it raises)."""
        t0 = time.perf_counter()
        try:
            return preprocess(item)
        finally:
            self.record(time.perf_counter() - t0)

    def record(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)
            self._mean = seconds if not self._n else (1 - _EWMA) * self._mean + _EWMA * seconds
            self._n += 1
            self.inline = self._n >= _MIN_SAMPLES and self._mean < INLINE_PRE_S

    def samples(self) -> np.ndarray | None:
        """The kept samples (seconds per item), or None before the first."""
        with self._lock:
            return np.fromiter(self._samples, dtype=np.float64) if self._samples else None
