"""Model loading, flags-over-env config, and ``gpufleet load`` against a live server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpufleet.cli import app
from gpufleet.errors import ConfigError
from gpufleet.models import OnnxModel
from gpufleet.server.config import server_config
from gpufleet.server.run import load_model, pool_config
from gpufleet.tools.load import make_payloads

HERE = Path(__file__).parent


def test_load_model_kinds(tmp_path: Path) -> None:
    assert load_model("orientation") == ("orientation", "orientation")
    assert load_model("textdet") == ("textdet", "textdet")
    model, name = load_model(f"{HERE / 'slow_model.py'}:SlowModel")
    assert name == "SlowModel" and model.__name__ == "SlowModel"
    model, name = load_model("gpufleet.models.zoo.orientation:OrientationModel")
    assert name == "OrientationModel"
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    model, name = load_model(str(onnx))
    assert isinstance(model, OnnxModel) and name == "m"
    for bad in ("nope", "no_such_module_xyz:Cls", f"{HERE / 'slow_model.py'}:Nope", "missing.onnx", "x/y.py:C"):
        with pytest.raises(ConfigError):
            load_model(bad)


def test_flags_win_over_env() -> None:
    env = {"MAX_BATCH_SIZE": "8", "MAX_BATCH_WAIT_TIME": "0.5", "GPU_LOAD_BALANCE_STRATEGY": "round_robin",
           "GPUFLEET_MAX_QUEUE": "77"}
    cfg = pool_config({"max_batch_size": None, "max_wait_ms": 3.0, "balancer": None, "max_queue": None}, env)
    assert (cfg.max_batch_size, cfg.max_wait_ms, cfg.balancer, cfg.max_queue) == (8, 3.0, "round-robin", 77)
    assert pool_config({}, {"ENABLE_BATCHING": "false"}).max_batch_size == 1
    with pytest.raises(ConfigError):
        pool_config({"balancer": "fastest"}, {})


def test_http_workers_flag_wins_over_env() -> None:
    assert server_config({"http_workers": None}, {}).http_workers == 0  # serve picks it from the machine
    assert server_config({"http_workers": None}, {"GPUFLEET_HTTP_WORKERS": "8"}).http_workers == 8
    assert server_config({"http_workers": 2}, {"GPUFLEET_HTTP_WORKERS": "8"}).http_workers == 2
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match="http_workers"):
            server_config({}, {"GPUFLEET_HTTP_WORKERS": bad})


def test_serve_bad_flags_exit_2_with_one_line() -> None:
    runner = CliRunner()
    for args in (["serve", "--balancer", "fastest", "--cpu-devices", "1"], ["serve", "--max-queue", "0"],
                 ["serve", "nope-model"], ["serve", "--log-level", "loud"], ["serve", "--port", "70000"],
                 ["serve", "--http-workers", "0", "--cpu-devices", "1"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), r.output


def test_payload_variants_are_base64_jpeg_json() -> None:
    payloads = make_payloads("jpeg224")
    assert len(payloads) >= 4 and len({p.body for p in payloads}) == len(payloads)
    assert json.loads(payloads[0].body)["image"]
    with pytest.raises(ValueError):
        make_payloads("nope")


def test_load_burst_json_against_the_server(url: str) -> None:
    r = CliRunner().invoke(app, ["load", url, "--burst", "20", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["successful"] == 20 and report["errors"] == {}
    stats = report["batch_statistics"]
    assert stats["num_gpus"] == 2 and stats["total_batches"] >= 1 and len(stats["per_gpu_stats"]) == 2
    assert report["throughput_rps"] > 0


def test_load_closed_loop_reports_percentiles(url: str) -> None:
    r = CliRunner().invoke(app, ["load", url + "/predict", "-c", "8", "--duration", "1", "--warmup", "0.2", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["ok"] > 0 and report["errors"] == {}
    assert report["latency"]["p50_ms"] <= report["latency"]["p99_ms"]
    cpu = report["client_cpu"]  # the client's own CPU over the measured window (is the client the limit?)
    assert cpu["cores"] > 0 and cpu["max_process_cores"] == cpu["cores"] and cpu["ms_per_request"] > 0
    r = CliRunner().invoke(app, ["load", url + "/predict", "-c", "2", "--duration", "0.5", "--warmup", "0"])
    assert r.exit_code == 0 and "Client CPU:" in r.output
    r = CliRunner().invoke(app, ["load", url, "--burst", "3"])
    assert r.exit_code == 0 and "Batch Statistics:" in r.output and "Successful: 3/3" in r.output


def test_load_closed_loop_over_two_client_processes(url: str) -> None:
    r = CliRunner().invoke(app, ["load", url, "--concurrency", "4", "--processes", "2", "--duration", "1",
                                 "--warmup", "0.2", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["processes"] == 2 and report["ok"] > 0 and report["errors"] == {}
    assert report["latency"]["p50_ms"] > 0
    assert report["client_cpu"]["max_process_cores"] <= report["client_cpu"]["cores"]


def test_load_rejects_more_processes_than_clients(url: str) -> None:
    r = CliRunner().invoke(app, ["load", url, "--concurrency", "2", "--processes", "3"])
    assert r.exit_code != 0 and "--processes" in r.output
