"""Operator endpoints: ``GET /dashboard`` (a self-contained page), ``GET /monitor`` (NVML readings) and
``POST /admin/devices/{device}/drain|enable`` (stop or resume routing work to a device at run time) and
``POST /admin/batching`` (change ``max_batch_size``/``max_wait_ms`` while serving: ``gpufleet tune`` uses it).

The dashboard ships inside the package (``static/dashboard.html``: vanilla JS and canvas, no CDN) and reads
``/stats``, ``/health`` and ``/monitor`` once a second. With ``--token`` set, every endpoint here but the
page itself needs ``Authorization: Bearer <token>`` (the page has a token box).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gpufleet.errors import ConfigError
from gpufleet.server.base import ServerState, json_response
from gpufleet.server.errors import HTTPError

__all__ = ["routes"]

Handler = Callable[[Request], Awaitable[Response]]


def _page() -> bytes:
    return resources.files("gpufleet.server").joinpath("static/dashboard.html").read_bytes()


def routes(state: ServerState) -> dict[str, Handler]:
    """Handlers by name: ``dashboard``, ``monitor``, ``admin``, ``batching``."""
    page = _page()
    monitors: list[Any] = []

    def monitor() -> Any:
        if not monitors:  # started on first use: a server nobody watches samples nothing
            from gpufleet.devices.monitor import Monitor

            monitors.append(Monitor(state.pool.devices, period_s=1.0, history=300).start())
        return monitors[0]

    async def dashboard(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})

    async def monitor_endpoint(request: Request) -> Response:
        m = monitor()
        try:
            n = int(request.query_params.get("history", "0"))
        except ValueError:
            raise HTTPError(400, "history must be an integer number of samples") from None
        body: dict[str, Any] = {"period_s": m.period_s, "latest": m.latest()}
        if n > 0:
            body["history"] = m.history()[-n:]
        return json_response(body)

    async def admin(request: Request) -> Response:
        device, action = request.path_params["device"], request.path_params["action"]
        if action not in ("drain", "enable"):
            raise HTTPError(404, f"unknown action {action!r}; use drain or enable")
        workers = await state.pool.set_enabled_async(device, action == "enable")
        return json_response({"device": device, "enabled": action == "enable", "workers": workers})

    async def batching(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            raise HTTPError(400, "the body must be JSON: {\"max_batch_size\": 64, \"max_wait_ms\": 2}") from None
        if not isinstance(body, dict) or not body or set(body) - {"max_batch_size", "max_wait_ms"}:
            raise HTTPError(400, "send a JSON object with max_batch_size and/or max_wait_ms, nothing else")
        size, wait = body.get("max_batch_size"), body.get("max_wait_ms")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
            raise HTTPError(400, f"max_batch_size must be an integer, got {size!r}")
        if wait is not None and (not isinstance(wait, (int, float)) or isinstance(wait, bool)):
            raise HTTPError(400, f"max_wait_ms must be a number, got {wait!r}")
        try:
            now = await state.pool.configure_async(max_batch_size=size, max_wait_ms=wait)
        except ConfigError as exc:
            raise HTTPError(400, str(exc)) from None
        return json_response(now)

    return {"dashboard": dashboard, "monitor": monitor_endpoint, "admin": admin, "batching": batching}
