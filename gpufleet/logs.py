"""Logging set-up for the command line and servers: text or one JSON object per line, with request ids.

The server stores each request's id (the client's ``X-Request-Id`` or a new one) in :data:`REQUEST_ID`
while it handles the request; both formats add it to records logged meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextvars import ContextVar

__all__ = ["FORMATS", "REQUEST_ID", "JsonFormatter", "StderrHandler", "configure"]

FORMATS = ("text", "json")
REQUEST_ID: ContextVar[str | None] = ContextVar("gpufleet_request_id", default=None)


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:  # a record may name its request itself (extra=...)
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "pid", "request_id"?, "status"?, "error"?, "repeats"?, "exc"?}`` on
    one line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": os.getpid(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = rid
        for key in ("status", "error", "repeats"):  # set by the server's failure log (gpufleet.server.failures)
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the one at set-up.

    A handler bound to the stderr of set-up time breaks when that stream is swapped and closed (test runners,
    embedding applications): every later record then prints a "Logging error" traceback instead.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def configure(level: str = "info", fmt: str = "text", *, prefix: str = "") -> None:
    """Send every logger's records to stderr in ``fmt`` ("text" or "json") at ``level`` and above."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = StderrHandler()
    handler.addFilter(_RequestId())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
