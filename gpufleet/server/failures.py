"""The server's log of failed requests: every 5xx answer leaves a trace, without flooding the log.

The first failure of a kind (the error's type, its root cause's type and the file:line where that cause was
raised) is logged in full: method, path, status, request id, the error and the model's traceback (for a
process worker, the child's traceback, chained as ``gpufleet.engine.wire.RemoteTraceback``). Later failures
of the same kind within ``window_s`` are only counted, and one line says "N more like it in the last minute"
when the window closes. Records carry ``request_id``, ``error`` and ``status`` attributes, which the JSON log
format writes as fields.

Only failures pay for this: the success path does not call it. Probes that answer "not ready" (503 from
``/health`` or ``/v2/health/ready`` while starting or draining) are answers, not failures: the app does not
log them here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from gpufleet.engine.wire import RemoteTraceback
from gpufleet.errors import GpufleetError
from gpufleet.server.errors import HTTPError

__all__ = ["FailureLog", "kind_of"]

log = logging.getLogger("gpufleet.server.failures")

_FILE_LINE = re.compile(r'File "([^"]+)", line (\d+)')
MAX_KINDS = 1000  # kinds remembered at once; a flood of distinct kinds resets the table rather than growing it


def _root(exc: BaseException) -> BaseException:
    seen = 0
    while exc.__cause__ is not None and seen < 16:
        exc, seen = exc.__cause__, seen + 1
    return exc


def kind_of(exc: BaseException) -> tuple[str, str, str]:
    """``(error type, root cause type, "file:line" where the root cause was raised)``: what makes two failures
    "alike" for rate limiting. A remote traceback's type and place are read from its text."""
    root = _root(exc)
    if isinstance(root, RemoteTraceback):
        text = str(root).rstrip()
        places = _FILE_LINE.findall(text)
        where = f"{places[-1][0]}:{places[-1][1]}" if places else ""
        last = text.rsplit("\n", 1)[-1]
        return type(exc).__name__, last.split(":", 1)[0].strip(), where
    where = ""
    if root.__traceback__ is not None:
        frame = traceback.extract_tb(root.__traceback__)[-1]
        where = f"{frame.filename}:{frame.lineno}"
    return type(exc).__name__, type(root).__name__, where


def _wants_traceback(exc: BaseException) -> bool:
    """The server's own refusals (draining, pool closed, deadline) need no traceback; a model's error does."""
    if isinstance(exc, HTTPError):
        return False
    return not isinstance(exc, GpufleetError) or exc.__cause__ is not None


@dataclass
class _Kind:
    since: float
    more: int = 0
    last_request: str = ""
    flush: asyncio.TimerHandle | None = None


class FailureLog:
    """Log 5xx answers: the first of each kind in full, the rest counted per ``window_s``."""

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._kinds: dict[tuple[str, str, str], _Kind] = {}

    def failed(self, method: str, path: str, status: int, seconds: float, request_id: str,
               exc: BaseException | None) -> None:
        """One failed request (``exc`` is None when a handler answered 5xx without raising)."""
        message = (str(exc) or type(exc).__name__) if exc is not None else f"HTTP {status}"
        key = kind_of(exc) if exc is not None else ("", str(status), path)
        now = self.clock()
        kind = self._kinds.get(key)
        if kind is not None and now - kind.since < self.window_s:
            kind.more += 1
            kind.last_request = request_id
            if kind.flush is None:
                kind.flush = _call_later(kind.since + self.window_s - now, self._summary, key, kind)
            return
        if kind is not None:
            self._summary(key, kind)
        if len(self._kinds) >= MAX_KINDS:
            self._kinds.clear()
        self._kinds[key] = _Kind(now)
        log.log(logging.ERROR if status == 500 else logging.WARNING,
                "%s %s -> %d in %.1f ms (request %s): %s", method, path, status, seconds * 1e3, request_id, message,
                exc_info=exc if exc is not None and _wants_traceback(exc) else None,
                extra={"request_id": request_id, "error": message, "status": status})

    def flush(self) -> None:
        """Log the counts not yet reported (the server calls it when it stops)."""
        for key, kind in list(self._kinds.items()):
            self._summary(key, kind)

    def _summary(self, key: tuple[str, str, str], kind: _Kind) -> None:
        if kind.flush is not None:
            kind.flush.cancel()
            kind.flush = None
        if kind.more:
            what = " ".join(part for part in (key[1] if key[1] != key[0] else "", "at " + key[2] if key[2] else "")
                            if part)
            log.warning("%d more like it in the last minute (%s%s; last request %s)", kind.more, key[0],
                        f": {what}" if what else "", kind.last_request,
                        extra={"request_id": kind.last_request, "error": key[0], "repeats": kind.more})
            kind.more = 0


def _call_later(delay: float, fn: Callable[..., None], *args: object) -> asyncio.TimerHandle | None:
    try:
        return asyncio.get_running_loop().call_later(max(0.0, delay), fn, *args)
    except RuntimeError:  # no loop (a direct call in a test): the summary comes with the next failure of its kind
        return None
