"""Models for the Ray backend tests (importable by name in Ray's worker processes)."""

from __future__ import annotations

import time

from gpufleet.models.base import Model


class FailsInSetup(Model):
    def setup(self, device) -> None:
        raise KeyError("weights")

    def predict(self, batch: list) -> list:
        return batch


class SlowRows(Model):
    """Each item's first value times two, after 5 ms per batch: batches stay in flight long enough to be cut."""

    def predict(self, batch: list) -> list:
        time.sleep(0.005)
        return [float(x.flat[0]) * 2 for x in batch]
