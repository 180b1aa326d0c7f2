"""The OpenAPI 3 description of the server (``GET /openapi.json``) and a small page over it (``GET /docs``).

Hand-written: the routes are few and stable, and a generator (FastAPI, apispec) would be a heavy dependency
for one document. ``tests/server/test_openapi.py`` checks that every route of the app is described here.
"""

from __future__ import annotations

from typing import Any

import gpufleet

__all__ = ["DOCS_HTML", "spec"]

_JSON = "application/json"
_ERROR = {"description": "`{\"error\": \"<what is wrong>\"}` (see docs/serving.md, Errors)",
          "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "enum": ["1"]}}


def _ok(description: str, schema: dict[str, Any] | None = None, media: str = _JSON) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema or {"type": "object"}}}}


def _op(summary: str, ok: dict[str, Any], *, body: dict[str, Any] | None = None, errors: tuple[str, ...] = (),
        params: tuple[dict[str, Any], ...] = (), tag: str = "ops") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {"200": ok, **{e: _ERROR for e in errors}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    if params:
        op["parameters"] = list(params)
    return op


_WORK_ERRORS = ("400", "401", "413", "415", "429", "500", "503", "504")
_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string", "example": "FP32"},
    "shape": {"type": "array", "items": {"type": "integer"}}, "data": {"type": "array", "items": {}},
    "parameters": {"type": "object"}}}


def _model_paths() -> dict[str, Any]:
    infer = _op("Inference: JSON tensors, or binary tensor data after a JSON header "
                "(Inference-Header-Content-Length)",
                _ok("Output tensors", {"$ref": "#/components/schemas/InferResponse"}),
                body={_JSON: {"schema": {"$ref": "#/components/schemas/InferRequest"}},
                      "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                errors=(*_WORK_ERRORS, "404"), tag="kserve")
    out: dict[str, Any] = {}
    model = "/v2/models/{name}"
    for prefix, params in ((model, (_NAME,)), (model + "/versions/{version}", (_NAME, _VERSION))):
        out[prefix] = {"get": _op("Model metadata: inputs and outputs", _ok("Metadata"), errors=("404",),
                                  params=params, tag="kserve")}
        out[prefix + "/ready"] = {"get": _op("Model readiness", _ok("Ready"), errors=("404", "503"), params=params,
                                             tag="kserve")}
        out[prefix + "/config"] = {"get": _op("Triton model configuration", _ok("Config"), errors=("404",),
                                              params=params, tag="kserve")}
        out[prefix + "/stats"] = {"get": _op("Triton inference statistics of the model", _ok("Statistics"),
                                             errors=("404",), params=params, tag="kserve")}
        out[prefix + "/infer"] = {"post": {**infer, "parameters": list(params)}}
    return out


def spec() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict)."""
    any_json: dict[str, Any] = {}
    paths: dict[str, Any] = {
        "/predict": {"post": _op(
            "One item: a JSON value, or raw bytes (image/*, application/octet-stream); the model's result",
            _ok("The model's result as JSON", any_json),
            body={_JSON: {"schema": any_json}, "image/*": {"schema": {"type": "string", "format": "binary"}},
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            errors=_WORK_ERRORS, tag="predict")},
        "/predict/batch": {"post": _op(
            "Several items: a JSON list or {\"inputs\": [...]}; results in order",
            _ok("{\"outputs\": [...]}", {"type": "object", "properties": {"outputs": {"type": "array", "items": {}}}}),
            body={_JSON: {"schema": {"oneOf": [{"type": "array", "items": {}}, {
                "type": "object", "properties": {"inputs": {"type": "array", "items": {}}}}]}}},
            errors=_WORK_ERRORS, tag="predict")},
        "/health": {"get": _op("Health per worker (seed shape); 503 when not healthy", _ok("Health"),
                               errors=("503",))},
        "/stats": {"get": _op("Pool statistics (seed shape), stage latencies, histograms", _ok("Stats"),
                              errors=("401",))},
        "/metrics": {"get": _op("Prometheus metrics", _ok("Exposition text", {"type": "string"}, "text/plain"),
                                errors=("401",))},
        "/dashboard": {"get": _op("Live dashboard page", _ok("HTML", {"type": "string"}, "text/html"))},
        "/monitor": {"get": _op("NVML readings per device", _ok("Readings"), errors=("401",))},
        "/admin/devices/{device}/{action}": {"post": _op(
            "Drain or enable a device's workers", _ok("The device's new state"), errors=("401", "404"),
            params=({"name": "device", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "action", "in": "path", "required": True,
                     "schema": {"type": "string", "enum": ["drain", "enable"]}}))},
        "/admin/batching": {"post": _op(
            "Change max_batch_size (up to the set-up size) and/or max_wait_ms while serving",
            _ok("The batching settings in force"), errors=("400", "401"), body={"application/json": {"schema": {
                "type": "object", "properties": {"max_batch_size": {"type": "integer", "minimum": 1},
                                                 "max_wait_ms": {"type": "number", "minimum": 0}}}}})},
        "/openapi.json": {"get": _op("This document", _ok("OpenAPI 3"))},
        "/docs": {"get": _op("A page listing these routes", _ok("HTML", {"type": "string"}, "text/html"))},
        "/v2": {"get": _op("Server metadata", _ok("Metadata"), tag="kserve")},
        "/v2/health/live": {"get": _op("Liveness (200 while the process runs)", _ok("Live"), tag="kserve")},
        "/v2/health/ready": {"get": _op("Readiness", _ok("Ready"), errors=("503",), tag="kserve")},
        "/v2/models/stats": {"get": _op("Triton inference statistics of every model", _ok("Statistics"),
                                        tag="kserve")},
        "/v2/repository/index": {"post": _op(
            "Triton repository index: the served model and its state", _ok("Models", {"type": "array", "items": {}}),
            body={_JSON: {"schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}},
            tag="kserve")},
        **_model_paths(),
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "gpufleet", "version": gpufleet.__version__,
                 "description": "A model served on every GPU: its own /predict API, KServe v2 (Open Inference "
                                "Protocol) REST, and operator routes. Bearer token where the server has one."},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
                "Tensor": _TENSOR,
                "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
                    "id": {"type": "string"},
                    "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
                    "outputs": {"type": "array", "items": {"type": "object"}}, "parameters": {"type": "object"}}},
                "InferResponse": {"type": "object", "properties": {
                    "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
                    "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}}}},
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


DOCS_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>gpufleet API</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:70em}td{padding:.2em .8em;vertical-align:top}
code{font-size:13px}th{text-align:left}</style></head>
<body><h1>gpufleet API</h1>
<p>The OpenAPI 3 description is at <a href="openapi.json"><code>/openapi.json</code></a>; load it in any
OpenAPI viewer or client generator. Routes:</p>
<table id="routes"><tr><th>method</th><th>path</th><th>what</th><th>statuses</th></tr></table>
<script>
fetch("openapi.json").then(r => r.json()).then(doc => {
  const t = document.getElementById("routes");
  for (const [path, ops] of Object.entries(doc.paths)) for (const [m, op] of Object.entries(ops)) {
    const row = t.insertRow();
    [m.toUpperCase(), path, op.summary, Object.keys(op.responses).join(" ")].forEach((v, i) => {
      const c = row.insertCell(); if (i === 1) { const e = document.createElement("code"); e.textContent = v;
      c.appendChild(e); } else c.textContent = v; });
  }
});
</script></body></html>
"""
