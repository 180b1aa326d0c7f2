"""A model that does nothing, for measuring what a backend itself costs per batch (benchmarks/backend_overhead.py)."""

from __future__ import annotations


class NoOp:
    """Answers each item with itself."""

    def setup(self, device: object) -> None:
        self.device = device

    def predict(self, batch: list) -> list:
        return list(batch)
