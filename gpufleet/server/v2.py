"""KServe v2 / Open Inference Protocol REST endpoints over a pool (what ``tritonclient.http`` speaks).

An input tensor ``[N, ...]`` is split along dim 0 into N items submitted to the pool (so requests from
many clients batch together); results are gathered back into output tensors. Several inputs give each
item a ``{name: row}`` dict.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

import gpufleet
from gpufleet.errors import WorkerError
from gpufleet.server.base import ServerState, gather, json_response, read_body, submit_all
from gpufleet.server.errors import HTTPError
from gpufleet.server.kserve import DTYPES, Tensor, TensorSpec, decode_request, encode_response

__all__ = ["ModelSpec", "model_spec", "routes"]

VERSION = "1"


class ModelSpec:
    """Declared inputs/outputs; ``validate`` is False for models that declared nothing (anything goes)."""

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec], validate: bool) -> None:
        self.inputs, self.outputs, self.validate = inputs, outputs, validate

    def to_dict(self) -> dict[str, Any]:
        """Plain values, to ship to front-end processes (``from_dict`` reads them back)."""
        def one(t: TensorSpec) -> dict[str, Any]:
            return {**t.metadata(), "alternatives": [[d, list(s)] for d, s in t.alternatives]}

        return {"inputs": [one(t) for t in self.inputs], "outputs": [one(t) for t in self.outputs],
                "validate": self.validate}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(_specs(d["inputs"]), _specs(d["outputs"]), bool(d["validate"]))


def _specs(declared: Any) -> list[TensorSpec]:
    out = []
    for d in declared:
        if isinstance(d, TensorSpec):
            out.append(d)
        else:
            out.append(TensorSpec(d["name"], d["datatype"], list(d["shape"]),
                                  [(a[0], list(a[1])) for a in d.get("alternatives", ())]))
    return out


def model_spec(pool: Any) -> ModelSpec:
    """Inputs/outputs from the model's ``inputs``/``outputs`` attributes, orientation's defaults, or generic;
    a remote pool's come from the engine process (``info["model_spec"]``, computed there by this function)."""
    shipped = getattr(pool, "info", None)
    if isinstance(shipped, dict) and "model_spec" in shipped:
        return ModelSpec.from_dict(shipped["model_spec"])
    model = pool.model
    declared_in, declared_out = getattr(model, "inputs", None), getattr(model, "outputs", None)
    if isinstance(declared_in, (list, tuple)) and declared_in:
        outputs = _specs(declared_out) if isinstance(declared_out, (list, tuple)) else []
        return ModelSpec(_specs(declared_in), outputs, True)
    from gpufleet.models.zoo.orientation import OrientationModel

    if isinstance(model, OrientationModel):
        return ModelSpec(
            [TensorSpec("input", "FP32", [-1, 3, 224, 224],
                        [("BYTES", [-1]), ("BYTES", [-1, 1]), ("UINT8", [-1, -1, -1, 3])])],
            [TensorSpec("class", "INT64", [-1]), TensorSpec("score", "FP32", [-1]), TensorSpec("angle", "INT64", [-1])],
            True)
    return ModelSpec([TensorSpec("input", "FP32", [-1])], [TensorSpec("output", "FP32", [-1])], False)


def _items(spec: ModelSpec, tensors: list[Tensor]) -> list[Any]:
    if spec.validate:
        by_name = {s.name: s for s in spec.inputs}
        for t in tensors:
            if t.name not in by_name:
                raise HTTPError(400, f"model has no input '{t.name}'; inputs: {', '.join(by_name)}")
            by_name[t.name].check(t)
        missing = set(by_name) - {t.name for t in tensors}
        if missing:
            raise HTTPError(400, f"missing input(s): {', '.join(sorted(missing))}")
    if any(not t.shape for t in tensors):
        raise HTTPError(400, "inputs need a batch dimension (shape [N, ...])")
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise HTTPError(400, "all inputs must share dim 0 (the batch size)")
    if n == 0:
        raise HTTPError(400, "empty batch: dim 0 of the inputs is 0")

    def row(t: Tensor, i: int) -> Any:
        x = t.data[i]
        if t.datatype == "BYTES" and isinstance(x, np.ndarray) and x.size == 1:
            x = x.reshape(()).item()
        return x

    if len(tensors) == 1:
        t = tensors[0]
        return [row(t, i) for i in range(n)]
    return [{t.name: row(t, i) for t in tensors} for i in range(n)]


def _outputs(spec: ModelSpec, results: list[Any]) -> dict[str, np.ndarray]:
    declared = {s.name: s for s in spec.outputs}
    try:
        if all(isinstance(r, dict) for r in results):
            names = [n for n in declared if n in results[0]] or list(results[0])
            out = {}
            for name in names:
                s = declared.get(name)
                col = [r[name] for r in results]
                out[name] = np.asarray(col, dtype=DTYPES[s.datatype] if s else None)
            return out
        name = spec.outputs[0].name if spec.outputs else "output"
        arrs = [np.asarray(r.detach().cpu() if hasattr(r, "detach") else r) for r in results]
        return {name: np.stack(arrs)}
    except (KeyError, ValueError, TypeError) as exc:
        raise WorkerError(f"model results cannot form output tensors: {exc}") from exc


def routes(state: ServerState) -> dict[str, Any]:
    """The KServe handlers, keyed by route name; the app wraps them (auth, metrics, errors)."""
    spec_cache: list[ModelSpec] = []

    def spec() -> ModelSpec:
        if not spec_cache:
            spec_cache.append(model_spec(state.pool))
        return spec_cache[0]

    def check_name(request: Request) -> None:
        name = request.path_params["name"]
        if name != state.model_name:
            raise HTTPError(404, f"unknown model '{name}'; this server serves '{state.model_name}'")
        version = request.path_params.get("version")
        if version not in (None, "", VERSION):
            raise HTTPError(404, f"unknown version '{version}' of model '{name}'; versions: {VERSION}")

    async def server_meta(request: Request) -> Response:
        return json_response({"name": "gpufleet", "version": gpufleet.__version__,
                              "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        ok = state.ready
        return json_response({"ready": ok}, 200 if ok else 503)

    async def model_meta(request: Request) -> Response:
        check_name(request)
        s = spec()
        return json_response({"name": state.model_name, "versions": [VERSION], "platform": "gpufleet",
                              "inputs": [t.metadata() for t in s.inputs],
                              "outputs": [t.metadata() for t in s.outputs]})

    async def model_ready(request: Request) -> Response:
        check_name(request)
        ok = state.ready
        return json_response({"name": state.model_name, "ready": ok}, 200 if ok else 503)

    async def infer(request: Request) -> Response:
        check_name(request)
        body = await read_body(request, state.max_body_bytes)
        hlen = request.headers.get("inference-header-content-length")
        try:
            header_length = int(hlen) if hlen is not None else None
        except ValueError:
            raise HTTPError(400, f"invalid Inference-Header-Content-Length {hlen!r}") from None
        req = decode_request(body, header_length)
        s = spec()
        items = _items(s, req.inputs)
        results = await gather(request, submit_all(state, items, req.timeout_s))
        arrays = _outputs(s, results)
        chosen: list[tuple[str, np.ndarray, bool]] = []
        if req.outputs is None:
            chosen = [(n, a, req.binary_output) for n, a in arrays.items()]
        else:
            for name, flag in req.outputs:
                if name not in arrays:
                    raise HTTPError(400, f"model has no output '{name}'; outputs: {', '.join(arrays)}")
                chosen.append((name, arrays[name], req.binary_output if flag is None else flag))
        payload, header_len = encode_response(state.model_name, VERSION, req.id, chosen)
        if header_len is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(header_len)})

    return {"server_meta": server_meta, "live": live, "ready": ready, "model_meta": model_meta,
            "model_ready": model_ready, "infer": infer}


# The gRPC endpoint (grpc_service.py) shares REST's item conversion and output gathering.
items_of = _items
output_arrays = _outputs
