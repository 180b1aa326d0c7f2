"""HTTP serving over a :class:`gpufleet.Pool`: own API, KServe v2 REST, health, stats and metrics.

``create_app(pool)`` gives an ASGI app for any ASGI server; ``serve(model, ServerConfig(...))`` builds the
pool, runs uvicorn and drains on SIGTERM/SIGINT. Needs the ``server`` extra: ``pip install 'gpufleet[server]'``.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("gpufleet.server needs the server extra: pip install 'gpufleet[server]'") from exc

from gpufleet.server.app import create_app
from gpufleet.server.config import ServerConfig
from gpufleet.server.errors import HTTPError, error_response, status_for
from gpufleet.server.run import load_model, serve

__all__ = ["HTTPError", "ServerConfig", "create_app", "error_response", "load_model", "serve", "status_for"]
