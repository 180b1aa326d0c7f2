"""KServe v2 behaves like /predict: same items, same errors, metadata that tells the truth, Triton extensions.

Real servers on 127.0.0.1 and the official ``tritonclient.http`` client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as tc

from gpufleet import Pool
from tests.server.conftest import live_server


def square(batch: list) -> list:
    """A plain function: squares Python ints and leaves anything else alone (an np.int64 is not an int)."""
    return [x * x if isinstance(x, int) else x for x in batch]


def kinds(batch: list) -> list:
    return [{"type": type(x).__name__, "value": x if not isinstance(x, bytes) else x.decode()} for x in batch]


def opaque(batch: list) -> list:
    return [object() for _ in batch]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    with Pool(square, cpu_devices=1) as p1, Pool(kinds, cpu_devices=1) as p2, Pool(opaque, cpu_devices=1) as p3, \
            live_server(p1, model_name="square") as (u1, _), live_server(p2, model_name="kinds") as (u2, _), \
            live_server(p3, model_name="opaque") as (u3, _):
        yield {"square": u1, "kinds": u2, "opaque": u3}


def _client(url: str) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(url.removeprefix("http://"), connection_timeout=30, network_timeout=60)


def test_metadata_advertises_no_output_until_a_first_call(servers: dict[str, str]) -> None:
    c = _client(servers["square"])
    try:
        assert c.get_model_metadata("square")["outputs"] == []  # nothing declared: nothing that would 400
        inp = tc.InferInput("input", [3], "INT64")
        inp.set_data_from_numpy(np.array([2, 3, 4], dtype=np.int64))
        c.infer("square", [inp])
        (out,) = c.get_model_metadata("square")["outputs"]
        assert out == {"name": "output", "datatype": "INT64", "shape": [-1]}
        r = c.infer("square", [inp], outputs=[tc.InferRequestedOutput(out["name"])])  # what it says works
        assert r.as_numpy("output").tolist() == [4, 9, 16]
    finally:
        c.close()


@pytest.mark.parametrize("binary", [True, False])
def test_plain_function_gets_python_ints_like_predict(servers: dict[str, str], binary: bool) -> None:
    url = servers["square"]
    assert [httpx.post(url + "/predict", json=x).json() for x in (2, 3, 4)] == [4, 9, 16]
    c = _client(url)
    try:
        inp = tc.InferInput("input", [3], "INT64")
        inp.set_data_from_numpy(np.array([2, 3, 4], dtype=np.int64), binary_data=binary)
        assert c.infer("square", [inp]).as_numpy("output").tolist() == [4, 9, 16]
    finally:
        c.close()


def test_items_are_the_python_values_predict_gives(servers: dict[str, str]) -> None:
    url = servers["kinds"]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]}
    r = httpx.post(url + "/v2/models/kinds/infer", json=body).json()
    got = {o["name"]: o["data"] for o in r["outputs"]}
    assert got["type"] == ["list", "list"] and got["value"] == [1.0, 2.0, 3.0, 4.0]
    body = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2, 1], "data": ["a", "bé"]}]}
    got = {o["name"]: o["data"] for o in httpx.post(url + "/v2/models/kinds/infer", json=body).json()["outputs"]}
    assert got == {"type": ["str", "str"], "value": ["a", "bé"]}  # as /predict gets "a" for the JSON "a"
    assert httpx.post(url + "/predict", json="a").json() == {"type": "str", "value": "a"}
    c = _client(url)
    try:
        inp = tc.InferInput("s", [1], "BYTES")
        inp.set_data_from_numpy(np.array([b"raw"], dtype=object), binary_data=True)
        r = c.infer("kinds", [inp])
        assert r.as_numpy("type").tolist() == [b"bytes"]  # binary BYTES stay bytes, as a raw /predict body
    finally:
        c.close()


def test_result_that_is_not_json_able_is_the_same_500_everywhere(servers: dict[str, str]) -> None:
    url = servers["opaque"]
    p = httpx.post(url + "/predict", json=1)
    v = httpx.post(url + "/v2/models/opaque/infer",
                   json={"inputs": [{"name": "input", "datatype": "INT64", "shape": [1], "data": [1]}]})
    b = httpx.post(url + "/predict/batch", json=[1, 2])
    for r in (p, v, b):
        assert r.status_code == 500 and "the model's result is not JSON-serializable" in r.json()["error"], r.text
        assert "<object object" not in r.text


def test_tritonclient_config_statistics_and_repository_index(servers: dict[str, str]) -> None:
    c = _client(servers["square"])
    try:
        inp = tc.InferInput("input", [2], "INT64")
        inp.set_data_from_numpy(np.array([5, 6], dtype=np.int64))
        c.infer("square", [inp])
        cfg = c.get_model_config("square")
        assert cfg["name"] == "square" and cfg["max_batch_size"] >= 1
        assert cfg["instance_group"][0]["kind"] == "KIND_CPU" and cfg["input"][0]["data_type"] == "TYPE_FP32"
        for stats in (c.get_inference_statistics("square"), c.get_inference_statistics()):
            (one,) = stats["model_stats"]
            assert one["name"] == "square" and one["inference_count"] >= 2 and one["execution_count"] >= 1
            assert one["inference_stats"]["success"]["count"] >= 2 and one["inference_stats"]["queue"]["ns"] > 0
        assert c.get_model_repository_index() == [{"name": "square", "version": "1", "state": "READY", "reason": ""}]
        assert c.get_model_repository_index() == httpx.post(servers["square"] + "/v2/repository/index",
                                                            json={"ready": True}).json()
        with pytest.raises(tc.InferenceServerException):
            c.get_model_config("other")
        assert "statistics" in c.get_server_metadata()["extensions"]
    finally:
        c.close()
