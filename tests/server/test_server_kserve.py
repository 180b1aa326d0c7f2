"""KServe v2 codec (no server) and the /v2 endpoints with the official tritonclient.http client."""

from __future__ import annotations

import struct

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as tc
from tritonclient.utils import InferenceServerException

from gpufleet.models.zoo.orientation import OrientationModel
from gpufleet.server.errors import HTTPError
from gpufleet.server.kserve import decode_request, encode_response
from gpufleet.tools.synth import text_image
from tests.server.conftest import jpeg

ANGLES = (0, 90, 180, 270, 90, 0, 270, 180)


# -- codec ------------------------------------------------------------------------------------------------
def _binary_request(arrays: dict[str, np.ndarray], datatypes: dict[str, str]) -> tuple[bytes, int]:
    inputs, blobs = [], []
    for name, a in arrays.items():
        if datatypes[name] == "BYTES":
            blob = b"".join(struct.pack("<I", len(v)) + v for v in a.reshape(-1))
        else:
            blob = a.tobytes()
        inputs.append({"name": name, "datatype": datatypes[name], "shape": list(a.shape),
                       "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    head = orjson.dumps({"inputs": inputs})
    return head + b"".join(blobs), len(head)


def test_decode_binary_numeric_and_bytes() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    s = np.array([b"ab", b"", b"\x00\xff"], dtype=object)
    body, n = _binary_request({"x": x, "s": s}, {"x": "FP32", "s": "BYTES"})
    req = decode_request(body, n)
    assert np.array_equal(req.inputs[0].data, x) and req.inputs[0].shape == [2, 3, 4]
    assert list(req.inputs[1].data) == [b"ab", b"", b"\x00\xff"]


def test_decode_json_nested_and_flat() -> None:
    for data in ([[1, 2], [3, 4]], [1, 2, 3, 4]):
        body = orjson.dumps({"inputs": [{"name": "a", "datatype": "INT32", "shape": [2, 2], "data": data}],
                             "outputs": [{"name": "o", "parameters": {"binary_data": True}}],
                             "parameters": {"timeout": 2_000_000}})
        req = decode_request(body, None)
        assert req.inputs[0].data.dtype == np.int32 and req.inputs[0].data.tolist() == [[1, 2], [3, 4]]
        assert req.outputs == [("o", True)] and req.timeout_s == 2.0


@pytest.mark.parametrize(("inputs", "words"), [
    ([{"name": "a", "datatype": "FP32", "shape": [3], "data": [1, 2]}], "3 elements"),
    ([{"name": "a", "datatype": "FP99", "shape": [1], "data": [1]}], "unsupported datatype"),
    ([{"name": "a", "datatype": "UINT8", "shape": [1], "data": [300]}], "fit UINT8"),
    ([{"name": "a", "datatype": "FP32", "shape": [1], "data": ["x"]}], "numbers"),
    ([{"name": "a", "datatype": "FP32", "shape": [-1], "data": [1]}], "non-negative"),
    ([{"name": "a", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}], "runs past"),
    ([{"name": "a", "datatype": "FP32", "shape": [1]}], "neither"),
    ([], "non-empty"),
])
def test_decode_errors_name_the_problem(inputs: list, words: str) -> None:
    with pytest.raises(HTTPError) as err:
        decode_request(orjson.dumps({"inputs": inputs}), None)
    assert err.value.status == 400 and words in str(err.value)


def test_encode_binary_and_json() -> None:
    a = np.array([1, 2, 3], dtype=np.int64)
    body, n = encode_response("m", "1", "id7", [("a", a, True), ("b", a.astype(np.float32), False)])
    head = orjson.loads(body[:n])
    assert head["id"] == "id7" and head["outputs"][0]["parameters"]["binary_data_size"] == 24
    assert np.array_equal(np.frombuffer(body[n:], dtype="<i8"), a)
    assert head["outputs"][1]["data"] == [1.0, 2.0, 3.0] and head["outputs"][1]["datatype"] == "FP32"
    body, n = encode_response("m", None, None, [("a", a, False)])
    assert n is None and orjson.loads(body)["outputs"][0]["data"] == [1, 2, 3]


# -- tritonclient against the running server ---------------------------------------------------------------
@pytest.fixture(scope="module")
def triton(url: str):
    c = tc.InferenceServerClient(url.removeprefix("http://"), connection_timeout=30, network_timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    m = OrientationModel()
    return np.stack([m.preprocess(text_image(angle=a, seed=i + 11)) for i, a in enumerate(ANGLES)])


def test_triton_health_and_metadata(triton: tc.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("orientation") and not triton.is_model_ready("other")
    meta = triton.get_model_metadata("orientation")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert [o["name"] for o in meta["outputs"]] == ["class", "score", "angle"]
    assert triton.get_server_metadata()["extensions"] == ["binary_tensor_data", "model_configuration", "statistics"]
    with pytest.raises(InferenceServerException):
        triton.get_model_metadata("other")


@pytest.mark.parametrize("binary", [False, True])
def test_triton_infer_fp32_json_and_binary(triton: tc.InferenceServerClient, images: np.ndarray,
                                           binary: bool) -> None:
    inp = tc.InferInput("input", list(images.shape), "FP32")
    inp.set_data_from_numpy(images, binary_data=binary)
    outs = [tc.InferRequestedOutput(n, binary_data=binary) for n in ("angle", "score", "class")]
    r = triton.infer("orientation", [inp], outputs=outs, request_id="r1")
    angles = r.as_numpy("angle")
    assert angles.dtype == np.int64 and angles.shape == (len(ANGLES),)
    assert np.mean(angles == np.array(ANGLES)) >= 0.75
    assert r.as_numpy("score").dtype == np.float32 and r.get_response()["id"] == "r1"
    sent = r.get_response()["outputs"][0]
    assert ("parameters" in sent) == binary and ("data" in sent) == (not binary)


def test_triton_infer_bytes_jpeg_default_binary_outputs(triton: tc.InferenceServerClient) -> None:
    data = np.array([jpeg(a, seed=3) for a in (90, 270)], dtype=object)
    inp = tc.InferInput("input", [2], "BYTES")
    inp.set_data_from_numpy(data, binary_data=True)
    r = triton.infer("orientation", [inp])  # no outputs asked: all, binary
    assert r.as_numpy("angle").tolist() == [90, 270]
    assert set(o["name"] for o in r.get_response()["outputs"]) == {"angle", "class", "score"}


def test_triton_wrong_shape_and_dtype_are_400(triton: tc.InferenceServerClient, url: str) -> None:
    for shape, dtype, arr in (([2, 3, 100, 100], "FP32", np.zeros((2, 3, 100, 100), np.float32)),
                              ([1, 3, 224, 224], "FP64", np.zeros((1, 3, 224, 224), np.float64))):
        inp = tc.InferInput("input", shape, dtype)
        inp.set_data_from_numpy(arr, binary_data=True)
        with pytest.raises(InferenceServerException) as err:
            triton.infer("orientation", [inp])
        assert err.value.status() == "400" and "expected FP32" in err.value.message()
    r = httpx.post(f"{url}/v2/models/orientation/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": [0.0]}]})
    assert r.status_code == 400 and "elements" in r.json()["error"]
    r = httpx.post(f"{url}/v2/models/orientation/infer", json={"inputs": [
        {"name": "other", "datatype": "FP32", "shape": [1], "data": [0.0]}]})
    assert r.status_code == 400 and "no input 'other'" in r.json()["error"]
    r = httpx.post(f"{url}/v2/models/nope/infer", json={})
    assert r.status_code == 404


def test_v2_version_routes(url: str) -> None:
    assert httpx.get(f"{url}/v2/models/orientation/versions/1").json()["name"] == "orientation"
    assert httpx.get(f"{url}/v2/models/orientation/versions/1/ready").status_code == 200
    assert httpx.get(f"{url}/v2/models/orientation/versions/9").status_code == 404
    assert httpx.get(f"{url}/v2").json()["name"] == "gpufleet"
