"""A circuit breaker per worker: route around a worker that keeps failing, probe it again after a cool-down.

    closed ──(threshold failures in a row)──▶ open ──(cooldown passed)──▶ half-open
      ▲                                        ▲                            │
      └──────────────(a batch succeeds)────────┴──────(fails again)─────────┘

Failures are worker failures (the process died, hung, or hit a sticky CUDA error), not an item's own error.
Each re-open doubles the cool-down, up to ``max_cooldown_s``.
"""

from __future__ import annotations

import threading
import time

__all__ = ["CircuitBreaker"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    """Thread-safe; ``clock`` is injectable for tests.

    >>> b = CircuitBreaker(threshold=1, cooldown_s=0.0)
    >>> b.failure(); b.state
    'open'
    >>> b.poll(); b.state
    'half-open'
    >>> b.success(); b.state
    'closed'
    """

    def __init__(self, threshold: int = 3, cooldown_s: float = 5.0, max_cooldown_s: float = 60.0,
                 clock=time.monotonic) -> None:
        self.threshold = max(1, threshold)
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max(cooldown_s, max_cooldown_s)
        self._clock = clock
        self._lock = threading.Lock()
        self.state = CLOSED
        self.failures = 0  # in a row, since the last success
        self.error_count = 0  # all worker failures
        self.trips = 0  # times it opened
        self.cooldown_s = cooldown_s
        self.opened_at = 0.0
        self.last_error = ""

    @property
    def allows_traffic(self) -> bool:
        """Closed, or half-open (a probe); an open breaker routes around the worker."""
        return self.state != OPEN

    def failure(self, error: str = "") -> None:
        with self._lock:
            self.failures += 1
            self.error_count += 1
            self.last_error = error
            if self.state == HALF_OPEN:
                self.cooldown_s = min(self.max_cooldown_s, max(self.cooldown_s * 2, 0.001))
                self._open()
            elif self.state == CLOSED and self.failures >= self.threshold:
                self.cooldown_s = self.base_cooldown_s
                self._open()
            elif self.state == OPEN:
                self.opened_at = self._clock()

    def _open(self) -> None:
        self.state = OPEN
        self.trips += 1
        self.opened_at = self._clock()

    def poll(self) -> bool:
        """Open → half-open once the cool-down passed; True when the state changed."""
        with self._lock:
            if self.state == OPEN and self._clock() - self.opened_at >= self.cooldown_s:
                self.state = HALF_OPEN
                return True
            return False

    def success(self) -> bool:
        """A batch succeeded; True when this closed the breaker."""
        with self._lock:
            self.failures = 0
            if self.state != CLOSED:
                self.state = CLOSED
                self.cooldown_s = self.base_cooldown_s
                return True
            return False

    def describe(self) -> dict:
        with self._lock:
            return {"state": self.state, "consecutive_failures": self.failures, "breaker_trips": self.trips,
                    "worker_failures": self.error_count, "last_failure": self.last_error or None}
