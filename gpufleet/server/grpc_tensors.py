"""KServe v2 gRPC tensors <-> the REST codec's :class:`~gpufleet.server.kserve.Tensor`.

Inputs come in ``raw_input_contents`` (one blob per input, in order; BYTES elements as 4-byte little-endian
length + bytes, as in REST's binary extension) or in each input's typed ``contents``. Outputs always go out
in ``raw_output_contents``: ``tritonclient.grpc``'s ``as_numpy`` reads nothing else. Every malformed part
raises :class:`HTTPError` (400), which the service maps to ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gpufleet.server.errors import HTTPError
from gpufleet.server.kserve import DTYPES, Tensor, bytes_payload, datatype_of, parse_bytes

__all__ = ["decode_inputs", "encode_outputs", "parameter", "CONTENTS_FIELD"]

# Which InferTensorContents field carries each datatype (FP16 has none: it must come raw).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _bad(message: str) -> HTTPError:
    return HTTPError(400, message)


def parameter(params: Any, key: str) -> Any:
    """The value of ``params[key]`` (a ``map<string, InferParameter>``), or ``None`` when absent."""
    if key not in params:
        return None
    p = params[key]
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def _raw(name: str, datatype: str, shape: list[int], raw: bytes) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return parse_bytes(memoryview(raw), count, name)
    dt = DTYPES[datatype]
    if len(raw) != count * dt.itemsize:
        raise _bad(f"input '{name}': {datatype} {shape} needs {count * dt.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dt)


def _contents(name: str, datatype: str, shape: list[int], contents: Any) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise _bad(f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise _bad(f"input '{name}': shape {shape} needs {count} elements, {field} has {len(values)}")
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out
    try:
        return np.asarray(values, dtype=DTYPES[datatype])
    except (ValueError, OverflowError) as exc:
        raise _bad(f"input '{name}': data does not fit {datatype}: {exc}") from None


def decode_inputs(request: Any) -> list[Tensor]:
    """The input tensors of a ``ModelInferRequest``."""
    inputs = request.inputs
    if not inputs:
        raise _bad("the inference request needs at least one input")
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise _bad(f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; send one per input "
                   "(or none, and use contents)")
    tensors = []
    for i, t in enumerate(inputs):
        name, datatype, shape = t.name, t.datatype, list(t.shape)
        if not name:
            raise _bad(f"inputs[{i}] needs a name")
        if datatype not in DTYPES:
            raise _bad(f"input '{name}': unsupported datatype {datatype!r}; supported: {', '.join(DTYPES)}")
        if any(s < 0 for s in shape):
            raise _bad(f"input '{name}': shape must be non-negative integers, got {shape}")
        if "shared_memory_region" in t.parameters:
            raise _bad(f"input '{name}': shared memory inputs are not supported; send the data")
        flat = _raw(name, datatype, shape, raw[i]) if raw else _contents(name, datatype, shape, t.contents)
        tensors.append(Tensor(name, datatype, shape, flat.reshape(shape)))
    return tensors


def encode_outputs(response: Any, outputs: list[tuple[str, np.ndarray]]) -> None:
    """Append ``(name, array)`` outputs to a ``ModelInferResponse``: metadata in ``outputs``, data in
    ``raw_output_contents``."""
    for name, arr in outputs:
        datatype = datatype_of(arr)
        response.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        if datatype == "BYTES":
            response.raw_output_contents.append(bytes_payload(arr))
        else:
            response.raw_output_contents.append(np.ascontiguousarray(arr, dtype=DTYPES[datatype]).tobytes())
