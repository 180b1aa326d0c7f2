"""KServe v2 gRPC as :class:`gpufleet.Client` speaks it (``Client("grpc://host:8001")``): one channel per
client, ``inference.GRPCInferenceService`` calls with numpy tensors in ``raw_input_contents`` and out of
``raw_output_contents``, and the gRPC status of a failed call as gpufleet's error classes.

Needs the ``grpc`` extra (``grpcio`` and ``protobuf``); the messages come from :mod:`gpufleet.protos`, the
same ones the server uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from gpufleet.client_kserve import BYTES_LEN, DTYPES, InferResult, datatype_of, parse_bytes, to_bytes
from gpufleet.errors import (
    DeadlineExceeded,
    GpufleetError,
    InputError,
    PoolClosed,
    QueueFullError,
    WorkerError,
)

__all__ = ["GRPC_INSTALL", "RETRIED", "AsyncGrpcChannel", "GrpcChannel", "decode_infer", "encode_infer", "error_of",
           "retry_after_of", "target_of"]

GRPC_INSTALL = 'gpufleet.Client over gRPC needs grpcio: pip install "gpufleet[grpc]"'

RETRIED = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
"""gRPC status codes a call is tried again on (the server's 503 and 429)."""

# gRPC status code name -> (the HTTP status it stands for, gpufleet's class); ``status`` on the error is that HTTP
# status, so code that handles both protocols reads one attribute.
_CODES: dict[str, tuple[int, type[GpufleetError]]] = {
    "INVALID_ARGUMENT": (400, InputError), "RESOURCE_EXHAUSTED": (429, QueueFullError),
    "INTERNAL": (500, WorkerError), "UNKNOWN": (500, WorkerError), "UNAVAILABLE": (503, PoolClosed),
    "DEADLINE_EXCEEDED": (504, DeadlineExceeded), "UNAUTHENTICATED": (401, GpufleetError),
    "NOT_FOUND": (404, GpufleetError), "CANCELLED": (499, GpufleetError),
}


def _modules() -> tuple[Any, Any, str]:
    try:
        import grpc
        import grpc.aio  # noqa: F401

        from gpufleet.protos import SERVICE, pb
    except ImportError as exc:
        raise ImportError(f"{GRPC_INSTALL} ({exc})") from None
    return grpc, pb, SERVICE


def target_of(url: str) -> str:
    """``host:port`` of a ``grpc://host:port`` (or bare ``host:port``) URL."""
    return url.split("://", 1)[1] if "://" in url else url


def encode_infer(model: str, inputs: Mapping[str, Any], outputs: list[str] | None, timeout_s: float | None,
                 request_id: str | None) -> Any:
    """A ``ModelInferRequest`` with every input in ``raw_input_contents``."""
    _, pb, _ = _modules()
    req = pb.ModelInferRequest(model_name=model, id=request_id or "")
    for name, value in inputs.items():
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
        datatype = datatype_of(arr)
        req.inputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        if datatype == "BYTES":
            blob = b"".join(BYTES_LEN.pack(len(b)) + b for b in (to_bytes(v) for v in arr.reshape(-1)))
        else:
            blob = np.ascontiguousarray(arr, dtype=DTYPES[datatype]).tobytes()
        req.raw_input_contents.append(blob)
    for name in outputs or ():
        req.outputs.add(name=name)
    if timeout_s is not None:
        req.parameters["timeout"].int64_param = max(1, int(timeout_s * 1e6))  # Triton's: microseconds
    return req


def decode_infer(response: Any) -> InferResult:
    """A ``ModelInferResponse`` as an :class:`InferResult`."""
    out: dict[str, np.ndarray] = {}
    for o, raw in zip(response.outputs, response.raw_output_contents):
        shape = [int(s) for s in o.shape]
        count = math.prod(shape)
        flat = parse_bytes(raw, count) if o.datatype == "BYTES" else np.frombuffer(raw, dtype=DTYPES[o.datatype])
        out[o.name] = flat.reshape(shape)
    return InferResult(out, model_name=response.model_name, model_version=response.model_version or None,
                       id=response.id or None)


def error_of(err: Any, method: str, error_class: type[GpufleetError]) -> GpufleetError:
    """gpufleet's class for a failed call (a ``grpc.RpcError``), with ``status`` (the HTTP status it stands for)
    and ``code`` (the gRPC code's name); ``error_class`` for codes with no engine class."""
    code = err.code().name
    status, cls = _CODES.get(code, (None, GpufleetError))
    if cls is GpufleetError:
        cls = error_class
    exc = cls(f"{method}: gRPC {code}: {err.details()}")
    exc.status = status  # type: ignore[attr-defined]
    exc.code = code  # type: ignore[attr-defined]
    return exc


def retry_after_of(err: Any) -> float | None:
    """The server's ``retry-after`` trailing metadata (seconds), if any."""
    for key, value in err.trailing_metadata() or ():
        if key == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


class _Channel:
    def __init__(self, url: str, token: str | None, aio: bool) -> None:
        grpc, pb, service = _modules()
        self.rpc_error = grpc.RpcError
        self.pb = pb
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self.channel = (grpc.aio if aio else grpc).insecure_channel(target_of(url), options=options)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.methods = {
            name: self.channel.unary_unary(f"/{service}/{name}", request_serializer=getattr(pb, req).SerializeToString,
                                           response_deserializer=getattr(pb, resp).FromString)
            for name, (req, resp) in pb.methods.items()}


class GrpcChannel(_Channel):
    """A blocking channel: ``call(method, request, timeout)`` returns the response or raises ``grpc.RpcError``."""

    def __init__(self, url: str, token: str | None) -> None:
        super().__init__(url, token, aio=False)

    def call(self, method: str, request: Any, timeout: float) -> Any:
        return self.methods[method](request, timeout=timeout, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()


class AsyncGrpcChannel(_Channel):
    """The ``grpc.aio`` twin of :class:`GrpcChannel` (``await call(...)``)."""

    def __init__(self, url: str, token: str | None) -> None:
        super().__init__(url, token, aio=True)

    async def call(self, method: str, request: Any, timeout: float) -> Any:
        return await self.methods[method](request, timeout=timeout, metadata=self.metadata)

    async def close(self) -> None:
        await self.channel.close()
