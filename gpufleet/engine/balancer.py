"""Balancers: which worker gets the next item.

``round-robin`` cycles; ``queue-depth`` picks the fewest outstanding items; ``speed`` picks the least
expected finish time, ``(outstanding + 1) × measured seconds per item``, so mixed GPUs get work in
proportion to their speed. Ties rotate, so an idle pool still spreads work over every device.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from gpufleet.errors import ConfigError

__all__ = ["Balancer", "QueueDepth", "RoundRobin", "Speed", "Routable", "make_balancer"]


class Routable(Protocol):
    outstanding: int
    item_time: float  # EWMA of seconds per item; 0.0 until measured


R = TypeVar("R", bound=Routable)


class Balancer:
    """Picks one of ``workers`` (all healthy and enabled; never empty). Called under the pool's lock."""

    name = "base"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def pick(self, workers: Sequence[R]) -> R:
        raise NotImplementedError

    def _argmin(self, workers: Sequence[R], cost: Callable[[R], float]) -> R:
        n = len(workers)
        start = next(self._turn) % n
        best = workers[start]
        best_cost = cost(best)
        for k in range(1, n):
            w = workers[(start + k) % n]
            c = cost(w)
            if c < best_cost:
                best, best_cost = w, c
        return best


class RoundRobin(Balancer):
    name = "round-robin"

    def pick(self, workers: Sequence[R]) -> R:
        return workers[next(self._turn) % len(workers)]


class QueueDepth(Balancer):
    name = "queue-depth"

    def pick(self, workers: Sequence[R]) -> R:
        return self._argmin(workers, lambda w: w.outstanding)


class Speed(Balancer):
    name = "speed"

    def pick(self, workers: Sequence[R]) -> R:
        known = [w.item_time for w in workers if w.item_time > 0]
        # Unmeasured workers are assumed as fast as the fastest measured one, so they get probed.
        default = min(known) if known else 1.0
        return self._argmin(workers, lambda w: (w.outstanding + 1) * (w.item_time or default))


_BALANCERS = {cls.name: cls for cls in (RoundRobin, QueueDepth, Speed)}


def make_balancer(name: str) -> Balancer:
    try:
        return _BALANCERS[name]()
    except KeyError:
        raise ConfigError(f"unknown balancer {name!r}; choose one of: {', '.join(_BALANCERS)}") from None
