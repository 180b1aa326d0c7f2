"""KServe v2 gRPC (``inference.GRPCInferenceService``) over the same :class:`ServerState` as the HTTP app.

``gpufleet serve --grpc-port 8001`` runs grpcio's asyncio server (``grpc.aio``) on uvicorn's event loop, in
the same process as HTTP (with ``--http-workers N``, in every front end: each binds the port with
``SO_REUSEPORT``, grpc's default on Linux, so the kernel spreads connections as it does for HTTP). Methods:
ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelInfer and Triton's ModelConfig (what
``tritonclient.grpc`` needs). Infer splits inputs into items exactly as REST does (``v2.items_of``), with the
same admission, token, in-flight accounting (the drain waits for gRPC calls too) and error mapping: gpufleet's
HTTP status (``errors.status_for``) becomes a gRPC code (:data:`CODES`); 429 and a dead worker carry trailing
metadata ``retry-after: 1``. An item's deadline is the smallest of the call's gRPC deadline, the request
parameter ``timeout`` (µs, as Triton) and the server's ``request_timeout_s``. Needs ``pip install "gpufleet[grpc]"``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import gpufleet
from gpufleet.errors import ConfigError, GpufleetError, WorkerDied
from gpufleet.server import v2
from gpufleet.server.base import ServerState, results, submit_all
from gpufleet.server.errors import HTTPError, status_for
from gpufleet.server.grpc_tensors import decode_inputs, encode_outputs, parameter

__all__ = ["CODES", "GRPC_EXTRA", "grpc_code", "require_grpc", "start_grpc"]

log = logging.getLogger(__name__)

GRPC_EXTRA = 'gRPC serving needs grpcio: pip install "gpufleet[grpc]"'

# HTTP status (errors.status_for) -> gRPC status code name.
CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED",
         415: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
         503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def require_grpc() -> Any:
    """The ``grpc`` module, or a :class:`ConfigError` that names the extra to install."""
    try:
        import grpc
        import grpc.aio  # noqa: F401

        from gpufleet import protos  # noqa: F401  (needs protobuf)
    except ImportError as exc:
        raise ConfigError(f"{GRPC_EXTRA} ({exc})") from None
    return grpc


def grpc_code(status: int) -> Any:
    """The ``grpc.StatusCode`` for an HTTP status of gpufleet's mapping."""
    import grpc

    return getattr(grpc.StatusCode, CODES.get(status, "UNKNOWN"))


def _deadline(*candidates: float | None) -> float | None:
    given = [c for c in candidates if c is not None and c > 0]
    return min(given) if given else None


class _Service:
    """The handlers; ``_wrap`` adds auth, admission, accounting, metrics and error mapping around each."""

    def __init__(self, state: ServerState) -> None:
        from gpufleet.protos import pb

        self.state, self.pb = state, pb
        self._spec: v2.ModelSpec | None = None

    def spec(self) -> v2.ModelSpec:
        if self._spec is None:
            self._spec = v2.model_spec(self.state.pool)
        return self._spec

    def check_name(self, name: str, version: str) -> None:
        if name != self.state.model_name:
            raise HTTPError(404, f"unknown model '{name}'; this server serves '{self.state.model_name}'")
        if version not in ("", v2.VERSION):
            raise HTTPError(404, f"unknown version '{version}' of model '{name}'; versions: {v2.VERSION}")

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method names
        return self.pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self.pb.ServerReadyResponse(ready=self.state.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self.pb.ServerMetadataResponse(name="gpufleet", version=gpufleet.__version__,
                                              extensions=["binary_tensor_data"])

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.check_name(request.name, request.version)
        return self.pb.ModelReadyResponse(ready=self.state.ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.check_name(request.name, request.version)
        s, meta = self.spec(), self.pb.ModelMetadataResponse
        return meta(name=self.state.model_name, versions=[v2.VERSION], platform="gpufleet",
                    inputs=[meta.TensorMetadata(**t.metadata()) for t in s.inputs],
                    outputs=[meta.TensorMetadata(**t.metadata()) for t in s.outputs])

    async def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.check_name(request.name, request.version)
        s, pb = self.spec(), self.pb
        tensors = [*s.inputs, *s.outputs]
        batched = bool(tensors) and all(t.shape[:1] == [-1] for t in tensors)
        config = getattr(self.state.pool, "config", None)
        max_batch = int(getattr(config, "max_batch_size", 0) or 0) if batched else 0
        if batched and max_batch <= 0:
            max_batch = 1 << 16  # batching by the pool, size not known here (remote pool, or probed)

        def dims(shape: list[int]) -> list[int]:
            return shape[1:] if batched else shape

        def dtype(name: str) -> int:
            return pb.DataType.values_by_name["TYPE_STRING" if name == "BYTES" else f"TYPE_{name}"].number

        cfg = pb.ModelConfig(name=self.state.model_name, platform="gpufleet", backend="gpufleet",
                             max_batch_size=max_batch,
                             input=[pb.ModelInput(name=t.name, data_type=dtype(t.datatype), dims=dims(t.shape))
                                    for t in s.inputs],
                             output=[pb.ModelOutput(name=t.name, data_type=dtype(t.datatype), dims=dims(t.shape))
                                     for t in s.outputs])
        if batched:
            wait = getattr(config, "max_wait_ms", None)
            cfg.dynamic_batching.max_queue_delay_microseconds = int((wait or 0) * 1000)
        return pb.ModelConfigResponse(config=cfg)

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.check_name(request.model_name, request.model_version)
        s = self.spec()
        items = v2.items_of(s, decode_inputs(request))
        timeout_us = parameter(request.parameters, "timeout")
        param_s = timeout_us / 1e6 if isinstance(timeout_us, (int, float)) and not isinstance(timeout_us, bool) \
            else None
        timeout_s = _deadline(param_s, context.time_remaining(), self.state.request_timeout_s)
        futures = submit_all(self.state, items, timeout_s)
        try:
            got = await results(futures, self.state.deadline_s(timeout_s))
        except BaseException:  # a failed item, or the call was cancelled (client gone, deadline): drop the rest
            for f in futures:
                f.cancel()
            raise
        arrays = v2.output_arrays(s, got)
        if request.outputs:
            chosen = []
            for o in request.outputs:
                if o.name not in arrays:
                    raise HTTPError(400, f"model has no output '{o.name}'; outputs: {', '.join(arrays)}")
                chosen.append((o.name, arrays[o.name]))
        else:
            chosen = list(arrays.items())
        response = self.pb.ModelInferResponse(model_name=self.state.model_name, model_version=v2.VERSION,
                                              id=request.id)
        encode_outputs(response, chosen)
        return response


Handler = Callable[[Any, Any], Awaitable[Any]]


def _wrap(state: ServerState, name: str, fn: Handler, *, open_: bool = False, work: bool = False) -> Handler:
    async def call(request: Any, context: Any) -> Any:
        t0 = time.perf_counter()
        entered = False
        failure: BaseException | None = None
        try:
            if not open_ and state.token is not None:
                auth = dict(context.invocation_metadata() or ()).get("authorization")
                if not state.authorized(auth):
                    raise HTTPError(401, "missing or wrong bearer token (metadata authorization: Bearer <token>)")
            if work:
                state.admit()
                state.enter()
                entered = True
            response = await fn(request, context)
        except asyncio.CancelledError:
            state.metrics.observe(name, 499, time.perf_counter() - t0)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, mapped in one place
            failure = exc
        finally:
            if entered:
                state.leave()
        if failure is None:
            state.metrics.observe(name, 200, time.perf_counter() - t0)
            return response
        status = status_for(failure)
        state.metrics.observe(name, status, time.perf_counter() - t0)
        message = str(failure) or type(failure).__name__
        if status == 500 and not isinstance(failure, (GpufleetError, HTTPError)):
            log.error("unexpected error serving gRPC %s", name, exc_info=failure)
            message = f"internal error: {type(failure).__name__}: {message}"
        if status >= 500:
            log.warning("gRPC %s -> %s: %s", name, CODES.get(status, "UNKNOWN"), message)
        if context.done():  # the call ended already (its deadline passed, the client left): nobody to tell
            return None
        if status == 429 or isinstance(failure, WorkerDied):
            context.set_trailing_metadata((("retry-after", "1"),))
        try:
            await context.abort(grpc_code(status), message)
        except abort_error:
            raise
        except Exception as exc:  # noqa: BLE001 - it ended while its status was being sent (the same race)
            log.debug("gRPC %s ended before its status %s could be sent: %s", name, grpc_code(status), exc)
        return None

    abort_error = require_grpc().aio.AbortError
    return call


def handlers(state: ServerState) -> Any:
    """grpc's generic handler for ``inference.GRPCInferenceService`` over ``state``."""
    grpc = require_grpc()
    from gpufleet.protos import SERVICE, pb

    svc = _Service(state)
    kinds = {"ServerLive": {"open_": True}, "ModelInfer": {"work": True}}
    methods = {}
    for method, (req, resp) in pb.methods.items():
        fn = _wrap(state, f"grpc_{method}", getattr(svc, method), **kinds.get(method, {}))
        methods[method] = grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=getattr(pb, req).FromString,
            response_serializer=getattr(pb, resp).SerializeToString)
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def start_grpc(state: ServerState, host: str, port: int, *, reuse_port: bool = False) -> Any:
    """Start a ``grpc.aio`` server on the running loop, bound to ``host:port``; returns it (``await
    server.stop(grace)`` to stop). ``reuse_port`` (``SO_REUSEPORT``) lets N front ends share the port; off,
    a port already taken fails here. Messages are bounded by the server's body limit."""
    grpc = require_grpc()
    options = [("grpc.so_reuseport", int(reuse_port)), ("grpc.max_receive_message_length", state.max_body_bytes),
               ("grpc.max_send_message_length", -1)]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handlers(state),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"cannot bind gRPC {address}: {exc}") from exc
    await server.start()
    server.gpufleet_port = bound  # the port actually bound (port 0 picks one)
    log.info("KServe v2 gRPC on %s:%d", host, bound)
    return server
