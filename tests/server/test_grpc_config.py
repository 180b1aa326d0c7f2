"""gRPC serving's configuration and install story: --grpc-port / GPUFLEET_GRPC_PORT, the one-line error
without grpcio, the code mapping, and the committed descriptor matching the .proto."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpufleet.errors import ConfigError
from gpufleet.server import ServerConfig
from gpufleet.server.config import server_config
from tests.e2e.serving import ROOT


def test_grpc_port_is_off_by_default_and_read_from_env() -> None:
    assert ServerConfig().grpc_port is None
    assert server_config({}, {"GPUFLEET_GRPC_PORT": "8001"}).grpc_port == 8001
    assert server_config({"grpc_port": 9001}, {"GPUFLEET_GRPC_PORT": "8001"}).grpc_port == 9001
    with pytest.raises(ConfigError, match="GPUFLEET_GRPC_PORT"):
        server_config({}, {"GPUFLEET_GRPC_PORT": "grpc"})
    with pytest.raises(ConfigError):
        ServerConfig(grpc_port=70000)


def test_without_grpcio_serve_says_which_extra_in_one_line() -> None:
    code = ("import sys; sys.modules['grpc'] = None\n"
            "from gpufleet.cli import main\n"
            "sys.argv = ['gpufleet', 'serve', 'tests/server/echo_model.py:Echo', '--cpu-devices', '1', "
            "'--grpc-port', '0']\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and 'pip install "gpufleet[grpc]"' in lines[0], lines


def test_statuses_map_to_grpc_codes() -> None:
    grpc = pytest.importorskip("grpc")
    from gpufleet.errors import DeadlineExceeded, InputError, PoolClosed, QueueFullError, WorkerDied
    from gpufleet.server.errors import HTTPError, status_for
    from gpufleet.server.grpc_service import grpc_code

    expected = {QueueFullError("q"): grpc.StatusCode.RESOURCE_EXHAUSTED, PoolClosed("c"): grpc.StatusCode.UNAVAILABLE,
                WorkerDied("d"): grpc.StatusCode.UNAVAILABLE, DeadlineExceeded("t"): grpc.StatusCode.DEADLINE_EXCEEDED,
                InputError("i"): grpc.StatusCode.INVALID_ARGUMENT, HTTPError(404, "m"): grpc.StatusCode.NOT_FOUND,
                HTTPError(401, "a"): grpc.StatusCode.UNAUTHENTICATED, RuntimeError("x"): grpc.StatusCode.INTERNAL}
    for exc, code in expected.items():
        assert grpc_code(status_for(exc)) == code, exc


def test_committed_descriptor_matches_the_proto() -> None:
    pytest.importorskip("grpc_tools")
    from gpufleet.protos import generate

    assert generate.main(["--check"]) == 0, "run: make protos"


def test_messages_live_in_a_private_pool_beside_tritonclient() -> None:
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc import service_pb2  # registers inference.* in protobuf's default pool

    from gpufleet.protos import pb

    ours = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"abc"])
    ours.inputs.add(name="x", datatype="BYTES", shape=[1])
    theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.model_name == "m" and theirs.inputs[0].datatype == "BYTES"
    assert theirs.raw_input_contents == [b"abc"]
