"""``create_app(pool)``: the ASGI app (Starlette) that serves a :class:`gpufleet.Pool` over HTTP.

Own API: ``POST /predict`` (JSON or raw image bytes), ``POST /predict/batch``, ``GET /health`` (seed shape),
``GET /stats`` (seed shape), ``GET /metrics`` (Prometheus), ``GET /openapi.json`` and ``GET /docs`` (the API's
description, ``openapi.py``). KServe v2 REST under ``/v2`` (see ``v2.py``).
The app is a thin layer: it decodes, submits items to the pool, and maps errors in one place.

>>> from gpufleet import Pool
>>> from gpufleet.server import create_app
>>> app = create_app(Pool("orientation"))  # doctest: +SKIP
>>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from gpufleet.engine import Pool
from gpufleet.logs import REQUEST_ID
from gpufleet.server import openapi, ops, v2
from gpufleet.server.base import ServerState, dumps, gather, json_response, not_json_able, read_body, submit_all
from gpufleet.server.errors import HTTPError, error_response
from gpufleet.server.failures import FailureLog
from gpufleet.server.metrics import CONTENT_TYPE, Metrics

__all__ = ["create_app"]

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
_RAW_TYPES = ("application/octet-stream",)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _json(body: bytes) -> Any:
    if not body:
        raise HTTPError(400, "empty request body; send JSON or image bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(400, f"malformed JSON: {exc}") from None


def _is_json(media: str) -> bool:
    return media in ("", "application/json", "text/json") or media.endswith("+json")


def _result_response(obj: Any) -> Response:
    try:
        return json_response(obj)
    except TypeError as exc:
        raise not_json_able(exc) from exc


def create_app(pool: Pool, *, model_name: str = "orientation", token: str | None = None, max_body_mb: float = 16.0,
               drain_timeout_s: float = 30.0, request_timeout_s: float | None = None,
               frontend_id: str | None = None) -> Starlette:
    """An ASGI app serving ``pool``; the caller owns the pool (close it after the server stops).

    ``pool`` may also be a ``gpufleet.engine.remote.RemotePool`` (``gpufleet serve --http-workers N`` runs
    this app in N front-end processes over one); ``frontend_id`` then names this process in an
    ``X-Gpufleet-Frontend`` response header and in ``/stats``.

    ``token`` requires ``Authorization: Bearer <token>`` everywhere except ``/health`` and
    ``/v2/health/live``. ``max_body_mb`` bounds request bodies (413 beyond). ``request_timeout_s`` is the
    per-item deadline (504 when passed; default: the pool's ``timeout_s``). ``app.state.gpufleet`` holds
    the :class:`ServerState`; set its ``draining`` to refuse new work (``gpufleet.server.serve`` does on
    SIGTERM).
    """
    if max_body_mb <= 0:
        raise ValueError(f"max_body_mb must be > 0, got {max_body_mb}")
    metrics = Metrics(pool)
    state = ServerState(pool, model_name=model_name, token=token, max_body_bytes=int(max_body_mb * 1024 * 1024),
                        request_timeout_s=request_timeout_s, drain_timeout_s=drain_timeout_s, metrics=metrics,
                        frontend_id=frontend_id)

    failures = FailureLog()

    def wrap(name: str, fn: Handler, *, open_: bool = False, work: bool = False) -> Handler:
        """Auth, admission, in-flight accounting, error mapping and metrics around one handler."""
        async def endpoint(request: Request) -> Response:
            t0 = time.perf_counter()
            entered = False
            rid = request.headers.get("x-request-id", "")
            if not rid or len(rid) > 128 or not rid.isprintable():
                rid = uuid.uuid4().hex[:16]
            token = REQUEST_ID.set(rid)
            error: Exception | None = None
            try:
                if not open_ and state.token is not None and not state.authorized(request.headers.get("authorization")):
                    raise HTTPError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
                if work:
                    state.admit()
                    state.enter()
                    entered = True
                response = await fn(request)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error, mapped in one place
                error = exc
                response = error_response(exc, log_unexpected=False)  # failures.failed logs it, with the request id
            finally:
                if entered:
                    state.leave()
            try:
                seconds = time.perf_counter() - t0
                metrics.observe(name, response.status_code, seconds)
                response.headers["X-Request-Id"] = rid
                if frontend_id is not None:
                    response.headers["X-Gpufleet-Frontend"] = frontend_id
                if response.status_code >= 500 and error is not None:  # not a probe answering "not ready" (503)
                    failures.failed(request.method, request.url.path, response.status_code, seconds, rid, error)
                elif log.isEnabledFor(logging.DEBUG):
                    log.debug("%s %s -> %d in %.1f ms (request %s)", request.method, request.url.path,
                              response.status_code, seconds * 1e3, rid)
            finally:
                REQUEST_ID.reset(token)  # after logging: the records above carry the request id
            return response

        return endpoint

    async def _item(request: Request) -> Any:
        media = _media_type(request)
        raw = media.startswith("image/") or media in _RAW_TYPES
        if not raw and not _is_json(media):
            raise HTTPError(415, f"unsupported content type {media!r}; send application/json, image/jpeg, "
                                 "image/png or application/octet-stream")
        body = await read_body(request, state.max_body_bytes)
        if raw:
            if not body:
                raise HTTPError(400, "empty request body; send image bytes")
            return body
        return _json(body)

    async def predict(request: Request) -> Response:
        item = await _item(request)
        (result,) = await gather(request, submit_all(state, [item]), state.deadline_s(None))
        return _result_response(result)

    async def predict_batch(request: Request) -> Response:
        media = _media_type(request)
        if not _is_json(media):
            raise HTTPError(415, f"unsupported content type {media!r} for /predict/batch; send a JSON list "
                                 "or {\"inputs\": [...]}")
        data = _json(await read_body(request, state.max_body_bytes))
        if isinstance(data, dict) and "inputs" in data:
            data = data["inputs"]
        if not isinstance(data, list) or not data:
            raise HTTPError(400, "/predict/batch needs a non-empty JSON list or {\"inputs\": [...]}")
        results = await gather(request, submit_all(state, data), state.deadline_s(None))
        return _result_response({"outputs": results})

    async def health(request: Request) -> Response:
        h = await state.pool.health_async()
        if state.draining:
            h.update(healthy=False, ready=False, draining=True)
        return json_response(h, 200 if h["healthy"] else 503)

    async def stats(request: Request) -> Response:
        s = await state.pool.stats_async()
        s["server"] = {"inflight_requests": state.inflight, "draining": state.draining, "model": state.model_name}
        if frontend_id is not None:
            s["server"]["frontend_pid"] = int(frontend_id) if frontend_id.isdigit() else frontend_id
        return json_response(s)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(await state.pool.stats_async()), media_type=CONTENT_TYPE)

    api_doc = dumps(openapi.spec())  # built once: the routes do not change while the app lives

    async def openapi_json(request: Request) -> Response:
        return Response(api_doc, media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(openapi.DOCS_HTML)

    k = v2.routes(state)
    model = "/v2/models/{name}"
    version = model + "/versions/{version}"
    o = ops.routes(state)
    routes = [
        Route("/predict", wrap("predict", predict, work=True), methods=["POST"]),
        Route("/predict/batch", wrap("predict_batch", predict_batch, work=True), methods=["POST"]),
        Route("/health", wrap("health", health, open_=True), methods=["GET"]),
        Route("/stats", wrap("stats", stats), methods=["GET"]),
        Route("/metrics", wrap("metrics", metrics_endpoint), methods=["GET"]),
        Route("/dashboard", wrap("dashboard", o["dashboard"], open_=True), methods=["GET"]),
        Route("/monitor", wrap("monitor", o["monitor"]), methods=["GET"]),
        Route("/admin/devices/{device}/{action}", wrap("admin", o["admin"]), methods=["POST"]),
        Route("/admin/batching", wrap("batching", o["batching"]), methods=["POST"]),
        Route("/openapi.json", wrap("openapi", openapi_json, open_=True), methods=["GET"]),
        Route("/docs", wrap("docs", docs, open_=True), methods=["GET"]),
        Route("/v2", wrap("v2_server", k["server_meta"]), methods=["GET"]),
        Route("/v2/health/live", wrap("v2_live", k["live"], open_=True), methods=["GET"]),
        Route("/v2/health/ready", wrap("v2_ready", k["ready"]), methods=["GET"]),
        Route("/v2/models/stats", wrap("v2_stats", k["model_stats"]), methods=["GET"]),  # before /v2/models/{name}
        Route("/v2/repository/index", wrap("v2_repository", k["repository_index"]), methods=["POST"]),
    ]
    for prefix in (model, version):
        routes += [
            Route(prefix, wrap("v2_model", k["model_meta"]), methods=["GET"]),
            Route(prefix + "/ready", wrap("v2_model_ready", k["model_ready"]), methods=["GET"]),
            Route(prefix + "/config", wrap("v2_config", k["model_config"]), methods=["GET"]),
            Route(prefix + "/stats", wrap("v2_stats", k["model_stats"]), methods=["GET"]),
            Route(prefix + "/infer", wrap("v2_infer", k["infer"], work=True), methods=["POST"]),
        ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return error_response(HTTPError(status, f"{detail}: {request.method} {request.url.path}"))

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: http_error})
    app.state.gpufleet = state
    app.state.failures = failures  # DrainingServer flushes its counts when it stops
    return app
