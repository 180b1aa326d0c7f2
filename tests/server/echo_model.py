"""Echo models for the multi-process server tests (loaded by path: ``tests/server/echo_model.py:Echo``)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np

from gpufleet.errors import InputError
from gpufleet.models.base import Model


class Echo(Model):
    """JSON → ``{"echo": item}``; bytes → ``{"bytes": n, "sha256": hex}``; numpy rows → ``row * 2`` (same dtype).

    ``{"sleep": s}`` makes its batch sleep ``s`` seconds; the item ``"bad-input"`` fails in preprocess
    (``InputError`` → 400) and ``"boom"`` in predict (``WorkerError`` → 500).
    """

    def setup(self, device) -> None:
        self.device = device

    def preprocess(self, item: Any) -> Any:
        if isinstance(item, str) and item == "bad-input":
            raise InputError("'bad-input' is not a valid item")
        return item

    def predict(self, batch: list) -> list:
        delay = max((float(x["sleep"]) for x in batch if isinstance(x, dict) and "sleep" in x), default=0.0)
        if delay:
            time.sleep(delay)
        if any(isinstance(x, str) and x == "boom" for x in batch):
            raise RuntimeError("boom")
        return [self._one(x) for x in batch]

    @staticmethod
    def _one(x: Any) -> Any:
        if isinstance(x, bytes):
            return {"bytes": len(x), "sha256": hashlib.sha256(x).hexdigest()}
        if isinstance(x, np.ndarray):
            return x * 2
        return {"echo": x}


class Fast(Model):
    """The cheapest model: echoes each item back (HTTP + IPC overhead only, for load measurements)."""

    def predict(self, batch: list) -> list:
        return [{"ok": 1} for _ in batch]
