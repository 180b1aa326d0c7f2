"""The one place where errors become HTTP statuses, for every endpoint (own API and KServe v2 alike).

    GpufleetError (engine)              HTTP
    ├── QueueFullError                  429 + Retry-After
    ├── PoolClosed                      503
    ├── WorkerDied                      503 + Retry-After (a worker died or none is left: try again)

Retry-After is the error's ``retry_after_s`` (the engine's estimate from measured restart and service
times), rounded up to whole seconds, else 1.
    ├── DeadlineExceeded                504
    ├── InputError, ConfigError         400
    ├── WorkerError, DeviceError        500
    HTTPError (raised by the server)    its own status: 400 malformed, 401, 404, 413, 415, 503 draining

Bodies are always ``{"error": "<what is wrong>"}``.
"""

from __future__ import annotations

import logging
import math

import orjson
from starlette.responses import Response

from gpufleet.errors import (
    ConfigError,
    DeadlineExceeded,
    DeviceError,
    GpufleetError,
    InputError,
    PoolClosed,
    QueueFullError,
    WorkerDied,
    WorkerError,
)

__all__ = ["HTTPError", "error_response", "status_for"]

log = logging.getLogger(__name__)

RETRY_AFTER_S = "1"

_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (QueueFullError, 429),
    (PoolClosed, 503),
    (WorkerDied, 503),
    (DeadlineExceeded, 504),
    (InputError, 400),
    (ConfigError, 400),
    (WorkerError, 500),
    (DeviceError, 500),
)


class HTTPError(Exception):
    """A request the server refuses itself (malformed body, auth, size, content type, draining)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def status_for(exc: BaseException) -> int:
    """The HTTP status for ``exc``: 4xx for the caller's mistakes and admission, 5xx for ours."""
    if isinstance(exc, HTTPError):
        return exc.status
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(exc: BaseException, *, log_unexpected: bool = True) -> Response:
    """``{"error": ...}`` with the status of :func:`status_for` (and ``Retry-After`` on 429).

    ``log_unexpected`` logs a 5xx that is not a ``GpufleetError`` with its traceback; the HTTP app passes False
    because it logs every 5xx itself, with the request id (``gpufleet.server.failures``)."""
    status = status_for(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, HTTPError):
        headers.update(exc.headers)
    if status == 429 or isinstance(exc, WorkerDied) or getattr(exc, "retry_after_s", None):
        after = getattr(exc, "retry_after_s", None)  # the engine's estimate: a restart's or the queue's time
        headers.setdefault("Retry-After", str(max(1, math.ceil(after))) if after else RETRY_AFTER_S)
    if log_unexpected and status >= 500 and not isinstance(exc, (GpufleetError, HTTPError)):
        log.error("unexpected error serving a request", exc_info=exc)
    message = str(exc) or type(exc).__name__
    if status == 500 and not isinstance(exc, (GpufleetError, HTTPError)):
        message = f"internal error: {type(exc).__name__}: {message}"
    return Response(orjson.dumps({"error": message}), status_code=status, headers=headers,
                    media_type="application/json")
