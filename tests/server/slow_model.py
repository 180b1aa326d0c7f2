"""Test models for the server tests; also loaded by path (``tests/server/slow_model.py:SlowModel``)."""

from __future__ import annotations

import os
import threading
import time

from gpufleet.models.base import Model

SEEN: list = []  # every item SlowModel predicted (thread backend: same process as the test)
_LOCK = threading.Lock()


class SlowModel(Model):
    """Echoes JSON items as ``{"echo": item}`` after sleeping ``SLOW_MODEL_S`` (default 0.05 s) per batch."""

    def setup(self, device) -> None:
        self.delay = float(os.environ.get("SLOW_MODEL_S", "0.05"))

    def predict(self, batch: list) -> list:
        time.sleep(self.delay)
        with _LOCK:
            SEEN.extend(batch)
        return [{"echo": x} for x in batch]


class Failing(Model):
    """Fails on items equal to "boom" (a WorkerError for that item; its neighbours are served)."""

    def predict(self, batch: list) -> list:
        if "boom" in batch:
            raise RuntimeError("boom")
        return list(batch)


class SlowSetup(Model):
    """A model whose ``setup`` sleeps ``SLOW_SETUP_S`` (default 30 s): checks that must come before the model
    loads (a port in use) are timed against it."""

    def setup(self, device) -> None:
        time.sleep(float(os.environ.get("SLOW_SETUP_S", "30")))

    def predict(self, batch: list) -> list:
        return list(batch)
