"""KServe v2 / Open Inference Protocol REST codec: JSON tensors and the binary tensor data extension.

A request body is a JSON header, optionally followed by raw tensor bytes when the client sends
``Inference-Header-Content-Length: <json length>``; each input with ``parameters.binary_data_size`` takes
its bytes from that tail, in input order. ``BYTES`` elements travel as 4-byte little-endian length + bytes.
Every malformed part raises :class:`HTTPError` (400) that names the tensor and what is wrong.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from gpufleet.server.errors import HTTPError

__all__ = ["DTYPES", "InferRequest", "Tensor", "TensorSpec", "decode_request", "encode_response", "datatype_of"]

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_BY_KIND = {v.newbyteorder("=").str if v != np.dtype(object) else "O": k for k, v in DTYPES.items()}
_LEN = struct.Struct("<I")


def _bad(message: str) -> HTTPError:
    return HTTPError(400, message)


@dataclass
class Tensor:
    """One decoded input; ``json`` is True when its elements came as JSON ``data`` (BYTES elements were then
    strings, stored UTF-8 encoded), False when they came as binary tensor data."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray
    json: bool = False


@dataclass
class TensorSpec:
    """A declared input or output: ``shape`` uses -1 for any size; ``alternatives`` are other accepted
    ``(datatype, shape)`` pairs (e.g. encoded images as ``BYTES [-1]`` besides ``FP32 [-1,3,224,224]``)."""

    name: str
    datatype: str
    shape: list[int]
    alternatives: list[tuple[str, list[int]]] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def check(self, t: Tensor) -> None:
        """Raise 400 unless ``t`` has this spec's (or an alternative's) datatype and a matching shape."""
        options = [(self.datatype, self.shape), *self.alternatives]
        for dtype, shape in options:
            if t.datatype == dtype and len(t.shape) == len(shape) and all(
                    s == -1 or s == got for s, got in zip(shape, t.shape)):
                return
        wanted = " or ".join(f"{d} {s}" for d, s in options)
        raise _bad(f"input '{t.name}' is {t.datatype} {t.shape}; expected {wanted}")


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[tuple[str, bool | None]] | None  # requested outputs and their binary_data flag
    binary_output: bool
    timeout_s: float | None


def datatype_of(arr: np.ndarray) -> str:
    """The KServe datatype name of a numpy array's dtype (``BYTES`` for strings/objects)."""
    if arr.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_KIND[arr.dtype.newbyteorder("=").str]
    except KeyError:
        raise TypeError(f"no KServe datatype for numpy dtype {arr.dtype}") from None


def _parse_bytes(raw: memoryview, count: int, name: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    pos, n = 0, len(raw)
    for i in range(count):
        if pos + 4 > n:
            raise _bad(f"input '{name}': BYTES data ends after {i} of {count} elements")
        (size,) = _LEN.unpack_from(raw, pos)
        pos += 4
        if pos + size > n:
            raise _bad(f"input '{name}': BYTES element {i} claims {size} bytes, only {n - pos} left")
        out[i] = bytes(raw[pos:pos + size])
        pos += size
    if pos != n:
        raise _bad(f"input '{name}': {n - pos} bytes left over after {count} BYTES elements")
    return out


def _flatten(data: Any) -> list:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(x, list) for x in data):
        return data
    out: list = []
    for x in data:
        out.extend(_flatten(x))
    return out


def _from_json(name: str, datatype: str, data: Any, count: int) -> np.ndarray:
    flat = _flatten(data)
    if len(flat) != count:
        raise _bad(f"input '{name}': shape needs {count} elements, data has {len(flat)}")
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        for i, v in enumerate(flat):
            if not isinstance(v, str):
                raise _bad(f"input '{name}': BYTES data must be strings, element {i} is {type(v).__name__}")
            out[i] = v.encode()
        return out
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise _bad(f"input '{name}': BOOL data must be true/false")
    elif any(isinstance(v, (bool, str, dict, list)) or v is None for v in flat):
        raise _bad(f"input '{name}': {datatype} data must be numbers")
    try:
        return np.asarray(flat, dtype=DTYPES[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise _bad(f"input '{name}': data does not fit {datatype}: {exc}") from None


def decode_request(body: bytes, header_length: int | None) -> InferRequest:
    """Parse an infer request body; ``header_length`` is ``Inference-Header-Content-Length`` if sent."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise _bad(f"Inference-Header-Content-Length {header_length} does not fit a {len(body)}-byte body")
    head = body[:header_length] if header_length is not None else body
    try:
        req = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"malformed JSON in the inference request: {exc}") from None
    if not isinstance(req, dict):
        raise _bad("the inference request must be a JSON object with 'inputs'")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("the inference request needs a non-empty 'inputs' list")
    tail = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    offset = 0
    tensors: list[Tensor] = []
    for i, spec in enumerate(inputs):
        if not isinstance(spec, dict):
            raise _bad(f"inputs[{i}] must be an object with name, datatype, shape and data")
        name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        if not isinstance(name, str) or not name:
            raise _bad(f"inputs[{i}] needs a 'name' string")
        if datatype not in DTYPES:
            raise _bad(f"input '{name}': unsupported datatype {datatype!r}; supported: {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                   for s in shape):
            raise _bad(f"input '{name}': 'shape' must be a list of non-negative integers, got {shape!r}")
        count = math.prod(shape)
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise _bad(f"input '{name}': 'parameters' must be an object")
        if "shared_memory_region" in params:
            raise _bad(f"input '{name}': shared memory inputs are not supported; send data or binary data")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _bad(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(tail):
                raise _bad(f"input '{name}': binary_data_size {size} runs past the body's binary part "
                           f"({len(tail) - offset} bytes left)")
            raw = tail[offset:offset + size]
            offset += size
            if datatype == "BYTES":
                flat = _parse_bytes(raw, count, name)
            else:
                dt = DTYPES[datatype]
                if size != count * dt.itemsize:
                    raise _bad(f"input '{name}': {datatype} {shape} needs {count * dt.itemsize} bytes, got {size}")
                flat = np.frombuffer(raw, dtype=dt)
        elif "data" in spec:
            flat = _from_json(name, datatype, spec["data"], count)
        else:
            raise _bad(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
        tensors.append(Tensor(name, datatype, shape, flat.reshape(shape), json=size is None))
    if offset != len(tail):
        raise _bad(f"{len(tail) - offset} bytes of binary data are not claimed by any input")
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad("request 'parameters' must be an object")
    binary_output = bool(params.get("binary_data_output", False))
    timeout = params.get("timeout")  # Triton: microseconds
    timeout_s = timeout / 1e6 if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0 \
        else None
    outputs = None
    if req.get("outputs") is not None:
        if not isinstance(req["outputs"], list):
            raise _bad("'outputs' must be a list of {name, parameters}")
        outputs = []
        for o in req["outputs"]:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise _bad("each requested output needs a 'name'")
            op = o.get("parameters") or {}
            if not isinstance(op, dict):
                raise _bad(f"output '{o['name']}': 'parameters' must be an object")
            if "shared_memory_region" in op:
                raise _bad(f"output '{o['name']}': shared memory outputs are not supported")
            flag = op.get("binary_data")
            outputs.append((o["name"], None if flag is None else bool(flag)))
    rid = req.get("id")
    return InferRequest(id=rid if isinstance(rid, str) else None, inputs=tensors, outputs=outputs,
                        binary_output=binary_output, timeout_s=timeout_s)


def _bytes_payload(arr: np.ndarray) -> bytes:
    parts = []
    for v in arr.reshape(-1):
        b = v if isinstance(v, bytes) else str(v).encode()
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def encode_response(model_name: str, model_version: str | None, request_id: str | None,
                    outputs: list[tuple[str, np.ndarray, bool]]) -> tuple[bytes, int | None]:
    """Encode ``(name, array, binary)`` outputs; returns the body and the JSON header length when any
    output is binary (send it as ``Inference-Header-Content-Length``), else ``None``."""
    head: dict[str, Any] = {"model_name": model_name}
    if model_version:
        head["model_version"] = model_version
    if request_id is not None:
        head["id"] = request_id
    entries, blobs = [], []
    for name, arr, binary in outputs:
        datatype = datatype_of(arr)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = _bytes_payload(arr) if datatype == "BYTES" else \
                np.ascontiguousarray(arr, dtype=DTYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            entry["data"] = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
        else:
            entry["data"] = arr.reshape(-1).tolist()
        entries.append(entry)
    head["outputs"] = entries
    header = orjson.dumps(head)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


# The gRPC endpoint (grpc_tensors.py) carries BYTES tensors in the same 4-byte length-prefixed layout.
parse_bytes = _parse_bytes
bytes_payload = _bytes_payload
