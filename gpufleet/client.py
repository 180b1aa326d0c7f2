"""``gpufleet.Client`` / ``gpufleet.AsyncClient``: call a ``gpufleet serve`` over HTTP or KServe v2 gRPC.

One pooled ``httpx`` connection pool per client; ``predict`` posts to ``/predict`` (JSON, or raw bytes with a
content type), ``infer`` speaks KServe v2 with binary tensors (numpy in, numpy out), ``health``/``stats``/
``ready`` read the server's state. Calls that the server refuses for now (429 queue full, 503 not ready or
draining) and connections that fail before a request is sent are retried with exponential backoff and full
jitter, waiting at least the server's ``Retry-After``; attempts and total time are bounded by :class:`Retry`
and by the call's deadline (``timeout_s``, which also becomes the server-side deadline of ``infer``).
Errors come back as gpufleet's classes: 429 :class:`QueueFullError`, 503 :class:`PoolClosed`, 504
:class:`DeadlineExceeded`, 400/413/415 :class:`InputError`, 500 :class:`WorkerError`, anything else (401, 404,
transport) :class:`ClientError`; each carries ``status`` (``None`` for transport errors).

Over gRPC (``Client("grpc://127.0.0.1:8001", model="orientation")``, the server's ``--grpc-port``; needs
``pip install "gpufleet[grpc]"``) ``infer``, ``predict``, ``predict_batch``, ``health``, ``ready`` and
``model_metadata`` work the same; calls answered ``UNAVAILABLE`` or ``RESOURCE_EXHAUSTED`` are retried like
503 and 429; errors carry ``status`` (the HTTP status the gRPC code stands for) and ``code`` (its name).
``stats()`` is HTTP only.

>>> import gpufleet
>>> with gpufleet.Client("http://127.0.0.1:8000") as c:  # doctest: +SKIP
...     c.predict({"image": b64}), c.infer({"input": batch})["angle"]
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpufleet.client_grpc import RETRIED, decode_infer, encode_infer, error_of, retry_after_of
from gpufleet.client_kserve import InferResult, decode_response, encode_request
from gpufleet.errors import (
    DeadlineExceeded,
    GpufleetError,
    InputError,
    PoolClosed,
    QueueFullError,
    WorkerError,
)

__all__ = ["AsyncClient", "Client", "ClientError", "InferResult", "Retry"]

_RAW_TYPE = "application/octet-stream"
_PROTOCOLS = ("http", "grpc")


class ClientError(GpufleetError):
    """The server refused the call for a reason with no engine class (401, 404, ...), or could not be reached."""


@dataclass(frozen=True, kw_only=True)
class Retry:
    """When to try a call again: on ``statuses`` and on connection failures (nothing was sent), up to
    ``attempts`` tries and ``total_s`` seconds in all. Waits grow as ``backoff_s * 2**n`` up to ``max_backoff_s``
    with full jitter, and are never shorter than the server's ``Retry-After``.

    >>> Retry(attempts=1)  # no retries
    Retry(attempts=1, backoff_s=0.05, max_backoff_s=2.0, total_s=30.0, statuses=(429, 503))
    """

    attempts: int = 5
    backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    total_s: float = 30.0
    statuses: tuple[int, ...] = (429, 503)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0 or self.total_s <= 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0 and total_s > 0")

    def wait_s(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 0)."""
        jittered = random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** attempt))
        return max(jittered, retry_after or 0.0)


_ERRORS: dict[int, type[GpufleetError]] = {400: InputError, 413: InputError, 415: InputError, 429: QueueFullError,
                                           500: WorkerError, 503: PoolClosed, 504: DeadlineExceeded}


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error(status: int, body: bytes, path: str) -> GpufleetError:
    """gpufleet's class for an error response; the server's ``{"error": ...}`` message, ``status`` attached."""
    import json

    try:
        message = json.loads(body).get("error") or ""
    except (ValueError, AttributeError):
        message = body[:200].decode(errors="replace")
    exc = _ERRORS.get(status, ClientError)(f"{path}: HTTP {status}: {message}")
    exc.status = status  # type: ignore[attr-defined]
    return exc


def _transport_error(exc: Exception, url: str) -> ClientError:
    err = ClientError(f"cannot reach {url}: {type(exc).__name__}: {exc}")
    err.status = None  # type: ignore[attr-defined]
    return err


class _Call:
    """One logical call's attempts: what to send, its deadline, and whether to try again."""

    def __init__(self, retry: Retry, timeout_s: float | None) -> None:
        now = time.monotonic()
        self.retry = retry
        self.stop_at = now + min(retry.total_s, timeout_s) if timeout_s is not None else now + retry.total_s
        self.deadline = now + timeout_s if timeout_s is not None else None
        self.attempt = 0

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def attempt_timeout(self, default: float) -> float:
        left = self.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded("the call's deadline passed before it was answered")
        return default if left is None else min(default, left)

    def outcome(self, result: Any, url: str, path: str, ok: tuple[int, ...]) -> Any:
        """After one attempt (an httpx response, or the transport error it raised): the response to return, or
        the seconds (a float) to wait before the next attempt; raises what ends the call. The sync and async
        clients share it."""
        httpx = _httpx()
        if isinstance(result, Exception):  # httpx.TransportError
            if isinstance(result, (httpx.ConnectError, httpx.ConnectTimeout)):
                wait = self.next_wait(None)
                if wait is None:
                    raise _transport_error(result, url + path) from result
                return wait
            if isinstance(result, httpx.TimeoutException):
                raise DeadlineExceeded(f"{path}: no answer within the call's deadline") from result
            raise _transport_error(result, url + path) from result
        if result.status_code in ok:
            return result
        if result.status_code in self.retry.statuses:
            wait = self.next_wait(_retry_after(result.headers.get("retry-after")))
            if wait is not None:
                return wait
        raise _error(result.status_code, result.content, path)

    def rpc_outcome(self, error: Any, method: str) -> float:
        """After a failed gRPC attempt (a ``grpc.RpcError``): the seconds to wait before the next one; raises
        what ends the call."""
        if error.code().name in RETRIED:
            wait = self.next_wait(retry_after_of(error))
            if wait is not None:
                return wait
        raise error_of(error, method, ClientError) from None

    def next_wait(self, retry_after: float | None) -> float | None:
        """Seconds to sleep before trying again, or ``None`` when out of attempts or time."""
        self.attempt += 1
        if self.attempt >= self.retry.attempts:
            return None
        wait = float(self.retry.wait_s(self.attempt - 1, retry_after))
        return wait if time.monotonic() + wait < self.stop_at else None


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError('gpufleet.Client needs httpx: pip install "gpufleet[client]"') from exc
    return httpx


class _Base:
    def __init__(self, url: str, *, token: str | None, timeout_s: float, retry: Retry | None, model: str | None,
                 max_connections: int, protocol: str | None) -> None:
        self.url = url.rstrip("/")
        self.protocol = protocol or ("grpc" if self.url.startswith("grpc://") else "http")
        if self.protocol not in _PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(_PROTOCOLS)}, got {protocol!r}")
        self.model = model
        self.timeout_s = timeout_s
        self.retry = retry or Retry()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        if self.protocol == "http":
            self.limits = _httpx().Limits(max_connections=max_connections, max_keepalive_connections=max_connections)

    @property
    def grpc(self) -> bool:
        return self.protocol == "grpc"

    def _grpc_model(self, model: str | None) -> str:
        name = model or self.model
        if not name:
            raise ValueError("over gRPC the model name is needed: pass model=... here or to the client")
        return name

    @staticmethod
    def _rows(xs: list[Any]) -> dict[str, Any]:
        """``predict``/``predict_batch`` items as one KServe input tensor: bytes and text as ``BYTES``, arrays
        (and nested lists of numbers) stacked."""
        if all(isinstance(x, (bytes, bytearray, str)) for x in xs):
            arr = np.empty(len(xs), dtype=object)
            arr[:] = [bytes(x) if isinstance(x, bytearray) else x for x in xs]
            return {"input": arr}
        if any(isinstance(x, Mapping) for x in xs):
            raise ValueError("over gRPC predict takes bytes, text or arrays (KServe tensors); send JSON objects "
                             "over HTTP")
        return {"input": np.stack([np.asarray(x) for x in xs])}

    @staticmethod
    def _row(result: InferResult, i: int) -> dict[str, Any]:
        """Row ``i`` of every output, as Python values where it is one element (like /predict's JSON)."""
        out = {}
        for name, arr in result.outputs.items():
            v = arr[i]
            out[name] = v.item() if isinstance(v, np.generic) else v.tolist() if isinstance(v, np.ndarray) else v
        return out

    @staticmethod
    def _health(live: Any, ready: Any) -> dict[str, Any]:
        return {"healthy": bool(ready.ready), "live": bool(live.live), "ready": bool(ready.ready)}

    def _predict_request(self, x: Any, content_type: str | None) -> dict[str, Any]:
        if isinstance(x, (bytes, bytearray, memoryview)):
            return {"content": bytes(x), "headers": {"Content-Type": content_type or _RAW_TYPE}}
        return {"json": x}

    def _infer_request(self, inputs: Mapping[str, Any], outputs: list[str] | None, timeout_s: float | None,
                       request_id: str | None) -> dict[str, Any]:
        body, hlen = encode_request(inputs, outputs, timeout_s, request_id)
        return {"content": body, "headers": {"Content-Type": _RAW_TYPE, "Inference-Header-Content-Length": str(hlen)}}

    def _model_path(self, model: str | None, suffix: str) -> str:
        name = model or self.model
        if not name:
            raise ValueError("no model name: pass model=... here or to the client")
        return f"/v2/models/{name}{suffix}"


def _infer_result(response: Any) -> InferResult:
    hlen = response.headers.get("inference-header-content-length")
    return decode_response(response.content, int(hlen) if hlen is not None else None)


class Client(_Base):
    """Synchronous client; thread-safe (one ``httpx.Client`` pool, or one gRPC channel). ``url`` is
    ``http(s)://host:port`` or ``grpc://host:port`` (or give ``protocol="grpc"``). ``model`` names the KServe
    model for ``infer`` (default over HTTP: ask the server's ``/stats`` once; needed over gRPC); ``transport``
    is an ``httpx`` transport (tests use ``httpx.MockTransport``)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, token: str | None = None, timeout_s: float = 60.0,
                 retry: Retry | None = None, model: str | None = None, max_connections: int = 64,
                 transport: Any = None, protocol: str | None = None) -> None:
        super().__init__(url, token=token, timeout_s=timeout_s, retry=retry, model=model,
                         max_connections=max_connections, protocol=protocol)
        if self.grpc:
            from gpufleet.client_grpc import GrpcChannel

            self._rpc_channel = GrpcChannel(self.url, token)
        else:
            self._http = _httpx().Client(base_url=self.url, headers=self.headers, limits=self.limits,
                                         transport=transport)

    def _send(self, method: str, path: str, timeout_s: float | None, ok: tuple[int, ...] = (200,),
              **kwargs: Any) -> Any:
        httpx = _httpx()
        call = _Call(self.retry, timeout_s)
        while True:
            timeout = call.attempt_timeout(self.timeout_s)
            try:
                result: Any = self._http.request(method, path, timeout=timeout, **kwargs)
            except httpx.TransportError as exc:
                result = exc
            step = call.outcome(result, self.url, path, ok)
            if not isinstance(step, float):
                return step
            time.sleep(step)

    def _rpc(self, method: str, request: Any, timeout_s: float | None) -> Any:
        channel = self._rpc_channel
        call = _Call(self.retry, timeout_s)
        while True:
            timeout = call.attempt_timeout(self.timeout_s)
            try:
                return channel.call(method, request, timeout)
            except channel.rpc_error as exc:
                wait = call.rpc_outcome(exc, method)
            time.sleep(wait)

    def predict(self, x: Any, *, content_type: str | None = None, timeout_s: float | None = None) -> Any:
        """``POST /predict``: ``x`` as JSON, or bytes with ``content_type`` (default octet-stream); the result.
        Over gRPC: ``x`` (bytes, text or an array) is a batch of one; the result maps output names to values."""
        if self.grpc:
            return self._row(self.infer(self._rows([x]), timeout_s=timeout_s), 0)
        return self._send("POST", "/predict", timeout_s, **self._predict_request(x, content_type)).json()

    def predict_batch(self, xs: list[Any], *, timeout_s: float | None = None) -> list[Any]:
        """``POST /predict/batch``: results in order (all or one error)."""
        if self.grpc:
            r = self.infer(self._rows(list(xs)), timeout_s=timeout_s)
            return [self._row(r, i) for i in range(len(xs))]
        return self._send("POST", "/predict/batch", timeout_s, json=list(xs)).json()["outputs"]

    def infer(self, inputs: Any, *, model: str | None = None, outputs: list[str] | None = None,
              timeout_s: float | None = None, request_id: str | None = None) -> InferResult:
        """KServe v2 inference: ``inputs`` maps names to arrays (``[N, ...]``, one item per row; a bare array is
        the input ``"input"``); binary tensors both ways. ``timeout_s`` is also the items' deadline on the server."""
        if not isinstance(inputs, Mapping):
            inputs = {"input": inputs}
        if self.grpc:
            req = encode_infer(self._grpc_model(model), inputs, outputs, timeout_s, request_id)
            return decode_infer(self._rpc("ModelInfer", req, timeout_s))
        path = self._model_path(model or self._default_model(), "/infer")
        r = self._send("POST", path, timeout_s, **self._infer_request(inputs, outputs, timeout_s, request_id))
        return _infer_result(r)

    def _default_model(self) -> str | None:
        if self.model is None:
            self.model = self.stats()["server"]["model"]
        return self.model

    def model_metadata(self, model: str | None = None) -> dict[str, Any]:
        if self.grpc:
            from google.protobuf.json_format import MessageToDict

            pb = self._rpc_channel.pb
            meta = self._rpc("ModelMetadata", pb.ModelMetadataRequest(name=self._grpc_model(model)), None)
            return MessageToDict(meta, preserving_proto_field_name=True)
        return self._send("GET", self._model_path(model or self._default_model(), ""), None).json()

    def health(self) -> dict[str, Any]:
        """``GET /health`` (seed shape), also when the server answers 503 (unhealthy): read ``["healthy"]``.
        Over gRPC: ``{"healthy", "live", "ready"}`` from ServerLive and ServerReady."""
        if self.grpc:
            pb = self._rpc_channel.pb
            return self._health(self._rpc("ServerLive", pb.ServerLiveRequest(), None),
                                self._rpc("ServerReady", pb.ServerReadyRequest(), None))
        return self._send("GET", "/health", None, ok=(200, 503)).json()

    def ready(self) -> bool:
        """``/v2/health/ready`` answers 200 (ServerReady over gRPC); no retries."""
        if self.grpc:
            channel = self._rpc_channel
            try:
                return bool(channel.call("ServerReady", channel.pb.ServerReadyRequest(), self.timeout_s).ready)
            except channel.rpc_error:
                return False
        try:
            return self._http.get("/v2/health/ready", timeout=self.timeout_s).status_code == 200
        except _httpx().TransportError:
            return False

    def stats(self) -> dict[str, Any]:
        """``GET /stats``: per-GPU counters, stage latencies, ``server`` (HTTP only)."""
        if self.grpc:
            raise ClientError("stats() reads /stats over HTTP: KServe gRPC has no such method; use a Client on "
                              "the server's HTTP port")
        return self._send("GET", "/stats", None).json()

    def close(self) -> None:
        if self.grpc:
            self._rpc_channel.close()
        else:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client` (``await c.predict(x)``), over one ``httpx.AsyncClient`` pool or one
    ``grpc.aio`` channel."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, token: str | None = None, timeout_s: float = 60.0,
                 retry: Retry | None = None, model: str | None = None, max_connections: int = 256,
                 transport: Any = None, protocol: str | None = None) -> None:
        super().__init__(url, token=token, timeout_s=timeout_s, retry=retry, model=model,
                         max_connections=max_connections, protocol=protocol)
        if self.grpc:
            from gpufleet.client_grpc import AsyncGrpcChannel

            self._rpc_channel = AsyncGrpcChannel(self.url, token)
        else:
            self._http = _httpx().AsyncClient(base_url=self.url, headers=self.headers, limits=self.limits,
                                              transport=transport)

    async def _send(self, method: str, path: str, timeout_s: float | None, ok: tuple[int, ...] = (200,),
                    **kwargs: Any) -> Any:
        httpx = _httpx()
        call = _Call(self.retry, timeout_s)
        while True:
            timeout = call.attempt_timeout(self.timeout_s)
            try:
                result: Any = await self._http.request(method, path, timeout=timeout, **kwargs)
            except httpx.TransportError as exc:
                result = exc
            step = call.outcome(result, self.url, path, ok)
            if not isinstance(step, float):
                return step
            await asyncio.sleep(step)

    async def _rpc(self, method: str, request: Any, timeout_s: float | None) -> Any:
        channel = self._rpc_channel
        call = _Call(self.retry, timeout_s)
        while True:
            timeout = call.attempt_timeout(self.timeout_s)
            try:
                return await channel.call(method, request, timeout)
            except channel.rpc_error as exc:
                wait = call.rpc_outcome(exc, method)
            await asyncio.sleep(wait)

    async def predict(self, x: Any, *, content_type: str | None = None, timeout_s: float | None = None) -> Any:
        if self.grpc:
            return self._row(await self.infer(self._rows([x]), timeout_s=timeout_s), 0)
        r = await self._send("POST", "/predict", timeout_s, **self._predict_request(x, content_type))
        return r.json()

    async def predict_batch(self, xs: list[Any], *, timeout_s: float | None = None) -> list[Any]:
        if self.grpc:
            r = await self.infer(self._rows(list(xs)), timeout_s=timeout_s)
            return [self._row(r, i) for i in range(len(xs))]
        return (await self._send("POST", "/predict/batch", timeout_s, json=list(xs))).json()["outputs"]

    async def infer(self, inputs: Any, *, model: str | None = None, outputs: list[str] | None = None,
                    timeout_s: float | None = None, request_id: str | None = None) -> InferResult:
        if not isinstance(inputs, Mapping):
            inputs = {"input": inputs}
        if self.grpc:
            req = encode_infer(self._grpc_model(model), inputs, outputs, timeout_s, request_id)
            return decode_infer(await self._rpc("ModelInfer", req, timeout_s))
        path = self._model_path(model or await self._default_model(), "/infer")
        r = await self._send("POST", path, timeout_s, **self._infer_request(inputs, outputs, timeout_s, request_id))
        return _infer_result(r)

    async def _default_model(self) -> str | None:
        if self.model is None:
            self.model = (await self.stats())["server"]["model"]
        return self.model

    async def model_metadata(self, model: str | None = None) -> dict[str, Any]:
        if self.grpc:
            from google.protobuf.json_format import MessageToDict

            pb = self._rpc_channel.pb
            meta = await self._rpc("ModelMetadata", pb.ModelMetadataRequest(name=self._grpc_model(model)), None)
            return MessageToDict(meta, preserving_proto_field_name=True)
        return (await self._send("GET", self._model_path(model or await self._default_model(), ""), None)).json()

    async def health(self) -> dict[str, Any]:
        if self.grpc:
            pb = self._rpc_channel.pb
            return self._health(await self._rpc("ServerLive", pb.ServerLiveRequest(), None),
                                await self._rpc("ServerReady", pb.ServerReadyRequest(), None))
        return (await self._send("GET", "/health", None, ok=(200, 503))).json()

    async def ready(self) -> bool:
        if self.grpc:
            channel = self._rpc_channel
            try:
                return bool((await channel.call("ServerReady", channel.pb.ServerReadyRequest(), self.timeout_s)).ready)
            except channel.rpc_error:
                return False
        try:
            return (await self._http.get("/v2/health/ready", timeout=self.timeout_s)).status_code == 200
        except _httpx().TransportError:
            return False

    async def stats(self) -> dict[str, Any]:
        if self.grpc:
            raise ClientError("stats() reads /stats over HTTP: KServe gRPC has no such method; use a client on "
                              "the server's HTTP port")
        return (await self._send("GET", "/stats", None)).json()

    async def aclose(self) -> None:
        if self.grpc:
            await self._rpc_channel.close()
        else:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
