"""Models for the Ray backend tests (importable by name in Ray's worker processes)."""

from __future__ import annotations

from gpufleet.models.base import Model


class FailsInSetup(Model):
    def setup(self, device) -> None:
        raise KeyError("weights")

    def predict(self, batch: list) -> list:
        return batch
