"""``report_progress``: a model says, from inside ``predict``, how far it got with the batch it serves.

Long items (an image generated in 30 denoising steps, a minute of speech) call it as they go::

    from gpufleet import report_progress

    def predict(self, batch):
        for step in range(30):
            ...
            report_progress({"step": step + 1, "steps": 30})

The value (anything JSON- and msgpack-able: a number, a small dict) reaches the ``progress`` callback that
``Pool.submit(..., progress=cb)`` gave each item, and shows as ``progress`` of the worker in ``pool.stats()``
(``/stats`` when served) until the batch is answered. It works in thread workers and process workers (the
child sends it to the parent); it is a no-op outside ``predict`` and in Ray actors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ProgressSink", "report_progress", "reporting_to"]

ProgressSink = Callable[[Any, "int | None"], None]
"""Where a worker sends ``(value, index)`` for the batch it runs on the current thread."""

_local = threading.local()


def report_progress(value: Any, index: int | None = None) -> None:
    """From inside ``predict``: ``value`` is the progress of item ``index`` of the current batch (``None``:
    every item of it). A no-op where no worker listens (outside ``predict``, Ray actors)."""
    sink = getattr(_local, "sink", None)
    if sink is not None:
        sink(value, index)


def reporting_to(sink: ProgressSink | None) -> ProgressSink | None:
    """Send this thread's :func:`report_progress` calls to ``sink`` (``None``: nowhere) from now on; returns
    the sink it replaces, for the worker to put back."""
    previous = getattr(_local, "sink", None)
    _local.sink = sink
    return previous
