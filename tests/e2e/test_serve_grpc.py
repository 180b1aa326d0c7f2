"""KServe v2 gRPC end to end: ``python -m gpufleet serve --grpc-port`` as a real process, the real
``tritonclient.grpc`` client (and raw calls for what it never sends: typed ``contents``, malformed blobs)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

grpc = pytest.importorskip("grpc")
tgrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.e2e.serving import ROOT, free_port, start_server, wait_ready  # noqa: E402

ECHO = f"{ROOT / 'tests' / 'server' / 'echo_model.py'}:Echo"
SLOW = f"{ROOT / 'tests' / 'server' / 'slow_model.py'}:SlowModel"
TOKEN = "s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _serve(model: str, *args: str, env: dict[str, str] | None = None, headers: dict[str, str] | None = None,
           ) -> tuple[subprocess.Popen, int]:
    port, gport = free_port(), free_port()
    proc = start_server(model, port, "--grpc-port", str(gport), *args, env=env)
    wait_ready(proc, f"http://127.0.0.1:{port}", headers=headers, timeout_s=120)
    return proc, gport


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


@pytest.fixture(scope="module")
def echo() -> tgrpc.InferenceServerClient:
    proc, gport = _serve(ECHO, "--token", TOKEN, "--model-name", "echo", headers={"Authorization": f"Bearer {TOKEN}"})
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{gport}")
    client.gport = gport
    yield client
    client.close()
    _stop(proc)


def _code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.status()


def test_live_ready_metadata_and_config(echo: tgrpc.InferenceServerClient) -> None:
    assert echo.is_server_live()  # open, like /v2/health/live
    assert echo.is_server_ready(headers=AUTH)
    assert echo.is_model_ready("echo", headers=AUTH)
    meta = echo.get_server_metadata(headers=AUTH, as_json=True)
    assert meta["name"] == "gpufleet" and "binary_tensor_data" in meta["extensions"]
    model = echo.get_model_metadata("echo", "1", headers=AUTH, as_json=True)
    assert model["name"] == "echo" and model["versions"] == ["1"]
    assert model["inputs"][0]["name"] == "input"
    config = echo.get_model_config("echo", headers=AUTH, as_json=True)["config"]
    assert config["name"] == "echo" and config["max_batch_size"] > 0
    assert config["input"][0]["data_type"] == "TYPE_FP32"


def test_infer_a_batch_of_tensors_and_bytes(echo: tgrpc.InferenceServerClient) -> None:
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    inp = tgrpc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = echo.infer("echo", [inp], headers=AUTH, request_id="r1")
    np.testing.assert_array_equal(out.as_numpy("output"), x * 2)  # Echo doubles numpy rows, row by row
    assert out.get_response().id == "r1"

    blobs = [b"", b"a", b"\x00\xffbinary", "ünïcode".encode()]
    inp = tgrpc.InferInput("input", [len(blobs)], "BYTES")
    inp.set_data_from_numpy(np.array(blobs, dtype=object))
    out = echo.infer("echo", [inp], headers=AUTH, outputs=[tgrpc.InferRequestedOutput("sha256")])
    assert [v.decode() for v in out.as_numpy("sha256")] == [hashlib.sha256(b).hexdigest() for b in blobs]
    assert out.as_numpy("bytes") is None  # only the requested output comes back

    ints = np.array([[1, -2], [3, 4]], dtype=np.int64)
    inp = tgrpc.InferInput("input", [2, 2], "INT64")
    inp.set_data_from_numpy(ints)
    np.testing.assert_array_equal(echo.infer("echo", [inp], headers=AUTH).as_numpy("output"), ints * 2)


def _raw_call(gport: int, request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
    with grpc.insecure_channel(f"127.0.0.1:{gport}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                                   response_deserializer=service_pb2.ModelInferResponse.FromString)
        return call(request, metadata=tuple(AUTH.items()), timeout=30)


def test_typed_contents_are_accepted_and_answered_raw(echo: tgrpc.InferenceServerClient) -> None:
    req = service_pb2.ModelInferRequest(model_name="echo")
    t = req.inputs.add(name="input", datatype="FP32", shape=[2, 3])
    t.contents.fp32_contents.extend([1, 2, 3, 4, 5, 6])
    resp = _raw_call(echo.gport, req)
    assert resp.outputs[0].shape == [2, 3] and resp.outputs[0].datatype == "FP32"
    got = np.frombuffer(resp.raw_output_contents[0], dtype="<f4").reshape(2, 3)
    np.testing.assert_array_equal(got, np.arange(1, 7, dtype=np.float32).reshape(2, 3) * 2)


@pytest.mark.parametrize("mutate, words", [
    (lambda r: r.raw_input_contents.append(b"\x00" * 7), "needs 8 bytes"),  # FP32 [2] is 8 bytes
    (lambda r: r.raw_input_contents.extend([b"\x00" * 8, b"x"]), "raw_input_contents has 2"),
    (lambda r: setattr(r.inputs[0], "datatype", "FP8"), "unsupported datatype"),
    (lambda r: r.inputs[0].contents.fp32_contents.append(1.0), "needs 2 elements"),
])
def test_malformed_requests_are_invalid_argument(echo: tgrpc.InferenceServerClient, mutate, words: str) -> None:
    req = service_pb2.ModelInferRequest(model_name="echo")
    req.inputs.add(name="input", datatype="FP32", shape=[2])
    mutate(req)
    with pytest.raises(grpc.RpcError) as exc:
        _raw_call(echo.gport, req)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in exc.value.details()


def test_unknown_model_and_version_are_not_found(echo: tgrpc.InferenceServerClient) -> None:
    inp = tgrpc.InferInput("input", [1], "FP32")
    inp.set_data_from_numpy(np.ones(1, np.float32))
    for name, version in (("nope", ""), ("echo", "7")):
        with pytest.raises(InferenceServerException) as exc:
            echo.infer(name, [inp], model_version=version, headers=AUTH)
        assert _code(exc) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as exc:
        echo.get_model_metadata("nope", headers=AUTH)
    assert _code(exc) == "StatusCode.NOT_FOUND"


def test_token_is_required_except_for_live(echo: tgrpc.InferenceServerClient) -> None:
    inp = tgrpc.InferInput("input", [1], "FP32")
    inp.set_data_from_numpy(np.ones(1, np.float32))
    for call in (lambda h: echo.infer("echo", [inp], headers=h), lambda h: echo.is_server_ready(headers=h),
                 lambda h: echo.get_model_config("echo", headers=h)):
        for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            with pytest.raises(InferenceServerException) as exc:
                call(headers)
            assert _code(exc) == "StatusCode.UNAUTHENTICATED"
    assert echo.is_server_live()


def test_admission_deadline_and_drain_map_to_grpc_codes() -> None:
    # One worker, 1 s per batch, room for 2 outstanding items.
    proc, gport = _serve(SLOW, "--max-queue", "2", "--max-batch-size", "1", "--drain-timeout-s", "30",
                         env={"SLOW_MODEL_S": "1.0"})
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{gport}")
    try:
        name = client.get_model_metadata("SlowModel", as_json=True)["name"]

        def inp(n: int) -> tgrpc.InferInput:
            i = tgrpc.InferInput("input", [n], "FP32")
            i.set_data_from_numpy(np.arange(n, dtype=np.float32))
            return i

        assert client.infer(name, [inp(1)]).as_numpy("echo").tolist() == [0.0]
        # Three items, room for two: the whole request is refused, nothing left queued.
        with pytest.raises(InferenceServerException) as exc:
            client.infer(name, [inp(3)])
        assert _code(exc) == "StatusCode.RESOURCE_EXHAUSTED" and "queue" in exc.value.message()
        # The gRPC deadline becomes the item's deadline: 0.3 s for a 1 s model.
        t0 = time.monotonic()
        with pytest.raises(InferenceServerException) as exc:
            client.infer(name, [inp(1)], client_timeout=0.3)
        assert _code(exc) == "StatusCode.DEADLINE_EXCEEDED" and time.monotonic() - t0 < 0.9
        time.sleep(1.2)  # let the worker finish the batch it had taken
        # Triton's request parameter `timeout` (µs) too: the pool answers 504 -> DEADLINE_EXCEEDED.
        with pytest.raises(InferenceServerException) as exc:
            client.infer(name, [inp(2)], timeout=200_000)
        assert _code(exc) == "StatusCode.DEADLINE_EXCEEDED"
        time.sleep(1.2)

        # SIGTERM with a call in flight: it finishes; new calls get UNAVAILABLE, readiness turns false.
        slow: list = []
        t = threading.Thread(target=lambda: slow.append(client.infer(name, [inp(1)]).as_numpy("echo")))
        t.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while client.is_server_ready():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(InferenceServerException) as exc:
            client.infer(name, [inp(1)])
        assert _code(exc) == "StatusCode.UNAVAILABLE"
        t.join(30)
        assert slow and slow[0].tolist() == [0.0]
        assert proc.wait(30) == 0
    finally:
        client.close()
        out = _stop(proc)
    assert "Traceback" not in out, out


def test_http_workers_front_ends_serve_grpc_on_one_port() -> None:
    proc, gport = _serve(ECHO, "--http-workers", "2", "--model-name", "echo")
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{gport}")
    try:
        x = np.arange(6, dtype=np.float32).reshape(3, 2)
        for _ in range(4):  # new channels: the kernel may land them on either front end
            c = tgrpc.InferenceServerClient(f"127.0.0.1:{gport}")
            inp = tgrpc.InferInput("input", [3, 2], "FP32")
            inp.set_data_from_numpy(x)
            np.testing.assert_array_equal(c.infer("echo", [inp]).as_numpy("output"), x * 2)
            c.close()
        assert client.get_model_config("echo", as_json=True)["config"]["name"] == "echo"
    finally:
        client.close()
        out = _stop(proc)
    assert proc.returncode == 0, out
