"""Models for the CLI tests, loaded by path (``tests/tools/failing_model.py:AlwaysFails``)."""

from __future__ import annotations

import time


class AlwaysFails:
    """Every item fails in predict: a server of this model answers 500 to every request."""

    def setup(self, device) -> None:
        self.device = device

    def predict(self, batch: list) -> list:
        raise RuntimeError("this model always fails (test)")


class JpegOnly:
    """Answers each item's size when it is a JPEG's bytes; anything else (a JSON body, base64) fails that item."""

    def setup(self, device) -> None:
        self.device = device

    def preprocess(self, item):
        from gpufleet.errors import InputError

        data = bytes(item) if isinstance(item, (bytes, bytearray, memoryview)) else b""
        if not data.startswith(b"\xff\xd8"):
            raise InputError(f"not a JPEG: {type(item).__name__} {bytes(data[:16])!r}")
        return len(data)

    def predict(self, batch: list) -> list:
        return batch


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
