"""Models for the CLI tests, loaded by path (``tests/tools/failing_model.py:AlwaysFails``)."""

from __future__ import annotations

import time


class AlwaysFails:
    """Every item fails in predict: a server of this model answers 500 to every request."""

    def setup(self, device) -> None:
        self.device = device

    def predict(self, batch: list) -> list:
        raise RuntimeError("this model always fails (test)")


class SlowSetup:
    """``setup`` takes 5 s: a command that fails before loading the model fails well before that."""

    def setup(self, device) -> None:
        time.sleep(5)

    def predict(self, batch: list) -> list:
        return batch


def load_weights(path: str) -> dict:
    return {}["weights"]


class BadSetup:
    """``setup`` raises in this file (line of ``load_weights``): the CLI must point there."""

    def setup(self, device) -> None:
        self.weights = load_weights("model.bin")

    def predict(self, batch: list) -> list:
        return batch
