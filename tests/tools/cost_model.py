"""A model whose batch costs a known time: ``COST_A_S + COST_B_S * n`` seconds of sleep for ``n`` items
(defaults 20 ms + 1 ms per item), for ``gpufleet tune``'s tests. Answers each item with ``{"n": batch size}``."""

from __future__ import annotations

import os
import time

from gpufleet.models.base import Model


class CostModel(Model):
    def setup(self, device) -> None:
        self.a = float(os.environ.get("COST_A_S", "0.02"))
        self.b = float(os.environ.get("COST_B_S", "0.001"))

    def predict(self, batch: list) -> list:
        time.sleep(self.a + self.b * len(batch))
        return [{"n": len(batch)} for _ in batch]
