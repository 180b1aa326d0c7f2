"""KServe v2 / Open Inference Protocol REST endpoints over a pool (what ``tritonclient.http`` speaks).

An input tensor ``[N, ...]`` is split along dim 0 into N items submitted to the pool (so requests from
many clients batch together); results are gathered back into output tensors. Several inputs give each
item a ``{name: row}`` dict.

What an item is (the same rule as ``/predict``, docs/serving.md): a model that declares its ``inputs`` (tensor
specs) gets numpy rows of the declared datatype; a model that declares nothing (a plain function, say) gets
plain Python values, as ``/predict`` gives for JSON: ``int``/``float``/``bool``, ``str`` for BYTES sent as
JSON strings, ``bytes`` for BYTES sent binary, nested lists for rows of more than one dimension.

Besides the core protocol, the Triton extensions ``tritonclient.http`` calls: model configuration
(``/config``), inference statistics (``/stats``) and the repository index (``POST /v2/repository/index``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

import gpufleet
from gpufleet.errors import WorkerError
from gpufleet.server.base import ServerState, gather, json_response, not_json_able, read_body, submit_all
from gpufleet.server.errors import HTTPError
from gpufleet.server.kserve import DTYPES, Tensor, TensorSpec, datatype_of, decode_request, encode_response

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
    # Nothing declared: any input is taken; outputs are unknown until a first call (routes() learns them).
    return ModelSpec([TensorSpec("input", "FP32", [-1])], [], False)


def _items(spec: ModelSpec, tensors: list[Tensor], plain: bool = True) -> list[Any]:
    """The items of a request: numpy rows for a model that declares its inputs, else (``plain``, REST) the
    Python values ``/predict`` would give; gRPC (``plain=False``) keeps numpy rows either way."""
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

    if spec.validate or not plain:  # declared tensors (or gRPC): numpy rows
        def row(t: Tensor, i: int) -> Any:
            x = t.data[i]
            if t.datatype == "BYTES" and isinstance(x, np.ndarray) and x.size == 1:
                x = x.reshape(()).item()
            return x

        columns = [[row(t, i) for i in range(n)] for t in tensors]
    else:  # nothing declared: Python values, as /predict gives for JSON
        columns = [_plain(t) for t in tensors]
    if len(tensors) == 1:
        return columns[0]
    return [{t.name: col[i] for t, col in zip(tensors, columns)} for i in range(n)]


def _plain(t: Tensor) -> list[Any]:
    rows = t.data.tolist()
    if t.datatype != "BYTES":
        return rows

    def text(x: Any) -> Any:
        if isinstance(x, list):
            return [text(v) for v in x]
        return x.decode() if t.json else x  # JSON strings were stored UTF-8 encoded: give the str back

    out = []
    for r in rows:
        v = text(r)
        while isinstance(v, list) and len(v) == 1:  # [N, 1] BYTES (tritonclient's habit): one element per item
            v = v[0]
        out.append(v)
    return out


def _outputs(spec: ModelSpec, results: list[Any]) -> dict[str, np.ndarray]:
    declared = {s.name: s for s in spec.outputs}
    out: dict[str, np.ndarray]
    try:
        if all(isinstance(r, dict) for r in results):
            names = [n for n in declared if n in results[0]] or list(results[0])
            out = {}
            for name in names:
                s = declared.get(name)
                col = [r[name] for r in results]
                out[name] = np.asarray(col, dtype=DTYPES[s.datatype] if s else None)
        else:
            name = spec.outputs[0].name if spec.outputs else "output"
            arrs = [np.asarray(r.detach().cpu() if hasattr(r, "detach") else r) for r in results]
            out = {name: np.stack(arrs)}
    except (KeyError, ValueError, TypeError) as exc:
        raise WorkerError(f"model results cannot form output tensors: {exc}") from exc
    for a in out.values():
        if a.dtype == object:  # only text and bytes become BYTES; anything else is /predict's 500, not str(obj)
            for v in a.reshape(-1):
                if not isinstance(v, (bytes, str)):
                    raise not_json_able(f"cannot encode {type(v).__name__} as a tensor element")
    return out


def routes(state: ServerState) -> dict[str, Any]:
    """The KServe handlers, keyed by route name; the app wraps them (auth, metrics, errors)."""
    spec_cache: list[ModelSpec] = []

    learned: list[TensorSpec] = []  # outputs of a model that declares none, from its first answered request

    def spec() -> ModelSpec:
        if not spec_cache:
            spec_cache.append(model_spec(state.pool))
        return spec_cache[0]

    def outputs() -> list[TensorSpec]:
        return spec().outputs or learned

    def learn(arrays: dict[str, np.ndarray]) -> None:
        learned.extend(TensorSpec(n, datatype_of(a), [-1] * a.ndim) for n, a in arrays.items())  # sizes may vary

    def check_name(request: Request) -> None:
        name = request.path_params["name"]
        if name != state.model_name:
            raise HTTPError(404, f"unknown model '{name}'; this server serves '{state.model_name}'")
        version = request.path_params.get("version")
        if version not in (None, "", VERSION):
            raise HTTPError(404, f"unknown version '{version}' of model '{name}'; versions: {VERSION}")

    async def server_meta(request: Request) -> Response:
        return json_response({"name": "gpufleet", "version": gpufleet.__version__,
                              "extensions": ["binary_tensor_data", "model_configuration", "statistics"]})

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
                              "outputs": [t.metadata() for t in outputs()]})

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
        results = await gather(request, submit_all(state, items, req.timeout_s), state.deadline_s(req.timeout_s))
        arrays = _outputs(s, results)
        if not s.outputs and not learned:
            learn(arrays)
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

    async def model_config(request: Request) -> Response:
        check_name(request)
        s = spec()
        stats = await state.pool.stats_async()
        workers = stats.get("per_worker_stats", [])
        batch = max((w.get("max_batch_size", 0) for w in workers), default=0)
        cpu = all(str(w.get("device", "")).startswith("cpu") for w in workers)

        def tensor(t: TensorSpec) -> dict[str, Any]:  # Triton's config: dims without the batch dimension
            return {"name": t.name, "data_type": "TYPE_STRING" if t.datatype == "BYTES" else "TYPE_" + t.datatype,
                    "dims": list(t.shape[1:]) if batch else list(t.shape)}

        return json_response({"name": state.model_name, "platform": "gpufleet", "backend": "gpufleet",
                              "version_policy": {"latest": {"num_versions": 1}}, "max_batch_size": batch,
                              "input": [tensor(t) for t in s.inputs], "output": [tensor(t) for t in outputs()],
                              "dynamic_batching": {},
                              "instance_group": [{"name": state.model_name, "count": len(workers),
                                                  "kind": "KIND_CPU" if cpu else "KIND_GPU"}]})

    async def model_stats(request: Request) -> Response:
        if "name" in request.path_params:
            check_name(request)
        stats = await state.pool.stats_async()
        stages = stats.get("stages", {})

        def duration(stage: str, count: int | None = None) -> dict[str, int]:
            st = stages.get(stage, {})
            n = int(st.get("count", 0))
            return {"count": n if count is None else count, "ns": int(n * st.get("mean_ms", 0.0) * 1e6)}

        total, errors = int(stats.get("total_requests", 0)), int(stats.get("errors", 0))
        success = duration("e2e", max(0, total - errors))
        one = {"name": state.model_name, "version": VERSION, "last_inference": 0,
               "inference_count": total, "execution_count": int(stats.get("total_batches", 0)),
               "inference_stats": {"success": success, "fail": {"count": errors, "ns": 0},
                                   "queue": duration("queue_wait"), "compute_input": duration("preprocess"),
                                   "compute_infer": duration("predict"), "compute_output": duration("postprocess"),
                                   "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0}},
               "batch_stats": []}
        return json_response({"model_stats": [one]})

    async def repository_index(request: Request) -> Response:
        body = await read_body(request, state.max_body_bytes)
        try:
            only_ready = bool(orjson.loads(body).get("ready", False)) if body.strip() else False
        except (orjson.JSONDecodeError, AttributeError):
            raise HTTPError(400, "the repository index request body must be a JSON object, e.g. {\"ready\": true}") \
                from None
        ok = state.ready
        if only_ready and not ok:
            return json_response([])
        return json_response([{"name": state.model_name, "version": VERSION, "state": "READY" if ok else "UNAVAILABLE",
                               "reason": "" if ok else "not ready (starting or draining)"}])

    return {"server_meta": server_meta, "live": live, "ready": ready, "model_meta": model_meta,
            "model_ready": model_ready, "infer": infer, "model_config": model_config, "model_stats": model_stats,
            "repository_index": repository_index}


def items_of(spec: ModelSpec, tensors: list[Tensor]) -> list[Any]:
    """The gRPC endpoint's items (grpc_service.py): REST's checks and splitting, numpy rows always (a gRPC client
    sends tensors; a model that wants Python values gets them over REST)."""
    return _items(spec, tensors, plain=False)


# The gRPC endpoint shares REST's output gathering.
output_arrays = _outputs
