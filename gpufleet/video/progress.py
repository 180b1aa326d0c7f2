"""A rich progress bar per input (frames, fps, ETA) when stdout is a terminal; nothing in pipes."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["Progress", "want_progress"]


def want_progress(explicit: bool | None = None) -> bool:
    """``explicit`` if given, else whether stdout is a terminal."""
    if explicit is not None:
        return explicit
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """One task per stream; every method is a no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[fps]:>7.1f} fps"), TimeElapsedColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[status]}"), transient=False)
            self._bar.start()
        return self

    def add(self, stream: str, total: int | None) -> None:
        if self._bar is not None:
            self._tasks[stream] = self._bar.add_task(stream, total=total, fps=0.0, status="")

    def advance(self, stream: str, n: int = 1) -> None:
        if self._bar is not None and stream in self._tasks:
            task_id = self._tasks[stream]
            self._bar.advance(task_id, n)
            task = self._bar.tasks[task_id] if task_id < len(self._bar.tasks) else None
            if task is not None and task.elapsed:
                self._bar.update(task_id, fps=task.completed / task.elapsed)

    def finish(self, stream: str, status: str) -> None:
        if self._bar is not None and stream in self._tasks:
            self._bar.update(self._tasks[stream], status=status)
            self._bar.stop_task(self._tasks[stream])

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
