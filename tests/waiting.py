"""Polling helper shared by tests that wait for another thread or process to reach a state."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, interval: float = 0.01) -> bool:
    """True as soon as ``cond()`` holds, False if it still does not after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(interval)
    return cond()
