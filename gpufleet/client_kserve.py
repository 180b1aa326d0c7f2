"""The KServe v2 binary tensor extension as :class:`gpufleet.Client` speaks it: numpy arrays in, numpy out.

A request body is a JSON header followed by each input's raw bytes (little-endian; ``BYTES`` elements as a
4-byte little-endian length + bytes), with ``Inference-Header-Content-Length: <header length>``; outputs are
asked for as binary too and come back the same way. Plain ``json`` and numpy only: no server packages.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["BYTES_LEN", "DTYPES", "InferResult", "datatype_of", "decode_response", "encode_request", "parse_bytes",
           "to_bytes"]

DTYPES: dict[str, str] = {
    "BOOL": "|b1", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
    "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
_BY_DTYPE = {np.dtype(v).newbyteorder("=").str if v[0] != "|" else np.dtype(v).str: k for k, v in DTYPES.items()}
BYTES_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class InferResult:
    """The outputs of one KServe v2 inference, by name.

    >>> r = InferResult({"score": np.array([0.5], np.float32)}, model_name="m")
    >>> r["score"].tolist()
    [0.5]
    """

    outputs: dict[str, np.ndarray]
    model_name: str = ""
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    def as_numpy(self, name: str) -> np.ndarray | None:
        """Like ``tritonclient``'s: the output's array, or ``None`` if the server did not send it."""
        return self.outputs.get(name)


def datatype_of(arr: np.ndarray) -> str:
    """The KServe datatype of a numpy array (``BYTES`` for objects and strings)."""
    if arr.dtype.kind in "OSU":
        return "BYTES"
    key = arr.dtype.str if arr.dtype.str[0] == "|" else arr.dtype.newbyteorder("=").str
    try:
        return _BY_DTYPE[key]
    except KeyError:
        raise TypeError(f"no KServe datatype for numpy dtype {arr.dtype}") from None


def to_bytes(v: Any) -> bytes:
    """One ``BYTES`` element: bytes as they are, text UTF-8, anything else its ``str``."""
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    return str(v).encode()


def encode_request(inputs: Mapping[str, Any], outputs: list[str] | None, timeout_s: float | None,
                   request_id: str | None) -> tuple[bytes, int]:
    """``(body, header length)`` for ``POST /v2/models/{name}/infer`` with every tensor binary."""
    entries, blobs = [], []
    for name, value in inputs.items():
        arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
        datatype = datatype_of(arr)
        if datatype == "BYTES":
            blob = b"".join(BYTES_LEN.pack(len(b)) + b for b in (to_bytes(v) for v in arr.reshape(-1)))
        else:
            blob = np.ascontiguousarray(arr, dtype=DTYPES[datatype]).tobytes()
        entries.append({"name": name, "datatype": datatype, "shape": list(arr.shape),
                        "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    head: dict[str, Any] = {"inputs": entries, "parameters": {"binary_data_output": True}}
    if outputs is not None:
        head["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    if timeout_s is not None:
        head["parameters"]["timeout"] = max(1, int(timeout_s * 1e6))  # Triton's: microseconds
    if request_id is not None:
        head["id"] = request_id
    header = json.dumps(head, separators=(",", ":")).encode()
    return header + b"".join(blobs), len(header)


def parse_bytes(raw: bytes, count: int) -> np.ndarray:
    """``count`` length-prefixed ``BYTES`` elements of ``raw`` as an object array."""
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        (n,) = BYTES_LEN.unpack_from(raw, pos)
        out[i] = raw[pos + 4:pos + 4 + n]
        pos += 4 + n
    return out


def decode_response(body: bytes, header_length: int | None) -> InferResult:
    """An infer response (JSON, or JSON + binary outputs) as an :class:`InferResult`."""
    head = json.loads(body[:header_length] if header_length is not None else body)
    tail = body[header_length:] if header_length is not None else b""
    offset, out = 0, {}
    for o in head.get("outputs", []):
        shape, datatype = [int(s) for s in o["shape"]], o["datatype"]
        count = int(np.prod(shape)) if shape else 1
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = tail[offset:offset + size]
            offset += size
            flat = parse_bytes(raw, count) if datatype == "BYTES" else np.frombuffer(raw, dtype=DTYPES[datatype])
        elif datatype == "BYTES":
            flat = np.array([v.encode() if isinstance(v, str) else v for v in o["data"]], dtype=object)
        else:
            flat = np.asarray(o["data"], dtype=DTYPES[datatype])
        out[o["name"]] = flat.reshape(shape)
    return InferResult(out, model_name=head.get("model_name", ""), model_version=head.get("model_version"),
                       id=head.get("id"), parameters=head.get("parameters") or {})
