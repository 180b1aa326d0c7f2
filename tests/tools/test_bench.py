"""gpufleet.tools.bench on CPU devices: the report's shape, --scale's device sets, and the CLI's bad-flag errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gpufleet.cli import app
from gpufleet.devices import Device
from gpufleet.tools.bench import BenchSpec, _scale_specs, run_bench


def test_scale_specs_take_powers_of_two_then_all() -> None:
    gpus = [Device(index=i, name="GPU") for i in range(6)]
    sets = _scale_specs(BenchSpec(), gpus)
    assert [(k, s.devices) for k, s in sets] == [(1, "0"), (2, "0,1"), (4, "0,1,2,3"), (6, "0,1,2,3,4,5")]
    cpus = [Device(index=i, kind="cpu", name="CPU") for i in range(2)]
    assert [(k, s.devices, s.cpu_devices) for k, s in _scale_specs(BenchSpec(), cpus)] == [(1, "cpu", 1),
                                                                                          (2, "cpu", 2)]


def test_run_bench_scale_reports_each_device_count() -> None:
    spec = BenchSpec(model="resnet18", batch_sizes=(4,), image_size=32, seconds=0.2, cpu_devices=2, scale=True)
    report = run_bench(spec)
    row = report["rows"][0]
    assert [s["devices"] for s in row["scaling"]] == [1, 2]
    assert row["scaling"][0]["speedup"] == 1.0
    assert set(row["scaling"][1]["per_device"]) == {"cpu:0", "cpu:1"}
    assert all(n > 0 for n in row["scaling"][1]["per_device"].values())
    assert row["pool"] is row["scaling"][-1] and row["raw"]["items_s"] > 0 and row["pool_vs_raw"] > 0
    assert report["backend"] == "thread"


def test_cli_bench_json_and_bad_flags() -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["bench", "--model", "resnet18", "--batch-sizes", "2", "--image-size", "32",
                             "--seconds", "0.1", "--cpu-devices", "1", "--no-raw", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["rows"][0]["pool"]["items_s"] > 0
    assert "bench [" not in ok.stderr  # --json: only the JSON, no progress
    bad = runner.invoke(app, ["bench", "--batch-sizes", "8,x"])
    assert bad.exit_code != 0 and "--batch-sizes" in bad.output


def test_cli_bench_progress_says_what_it_measures() -> None:
    r = CliRunner().invoke(app, ["bench", "--model", "resnet18", "--batch-sizes", "2,4", "--image-size", "32",
                                 "--seconds", "0.1", "--cpu-devices", "1", "--progress"])
    assert r.exit_code == 0, r.output
    steps = [line for line in r.stderr.splitlines() if line.startswith("bench [")]
    assert "loading resnet18 on cpu:0" in steps[0]
    assert any("batch 2 (1 of 2): the model alone" in s for s in steps)
    assert any("batch 4 (2 of 2): through the pool on 1 device(s)" in s for s in steps)


@pytest.mark.parametrize("flag", [["--backend", "fibers"], ["--precision", "fp8"]])
def test_cli_bench_rejects_unknown_choices(flag: list[str]) -> None:
    bad = CliRunner().invoke(app, ["bench", "--model", "resnet18", "--batch-sizes", "2", "--image-size", "32",
                                   "--seconds", "0.1", "--cpu-devices", "1", *flag])
    assert bad.exit_code != 0
    assert "backend" in bad.output or "precision" in bad.output


@pytest.mark.timeout(300)
def test_cli_bench_http_serves_the_same_model_side_by_side() -> None:
    r = CliRunner().invoke(app, ["bench", "--model", "resnet18", "--batch-sizes", "4", "--image-size", "32",
                                 "--seconds", "1", "--cpu-devices", "1", "--no-raw", "--http",
                                 "--http-concurrency", "4", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    served = report["rows"][0]["served"]
    assert served["items_s"] > 0 and served["errors"] == {} and served["requests"] > 0
    assert served["p50_ms"] <= served["p99_ms"] and served["concurrency"] == 4
    assert report["http"] == {"concurrency": 4, "http_workers": 1, "client_processes": 1}
    assert report["rows"][0]["pool"]["items_s"] > 0  # pooled and served in one run
    bad = CliRunner().invoke(app, ["bench", "--http", "--http-concurrency", "2", "--http-clients", "4"])
    assert bad.exit_code != 0 and "--http-clients" in bad.output


def test_ctrl_c_keeps_the_batch_sizes_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    def on_step(what: str) -> None:
        if what.startswith("batch 4"):
            raise KeyboardInterrupt  # as a Ctrl-C while batch 4 is measured

    spec = BenchSpec(model="resnet18", batch_sizes=(2, 4), image_size=32, seconds=0.1, cpu_devices=1)
    report = run_bench(spec, on_step=on_step)
    assert report["interrupted"] and [r["batch_size"] for r in report["rows"]] == [2]
    assert report["rows"][0]["pool"]["items_s"] > 0
    # the CLI prints those rows, says so and exits 130
    import gpufleet.tools.bench as bench

    monkeypatch.setattr(bench, "run_bench", lambda spec, on_step=None: report)
    r = CliRunner().invoke(app, ["bench", "--model", "resnet18", "--batch-sizes", "2,4", "--cpu-devices", "1",
                                 "--json"])
    assert r.exit_code == 130, r.output
    assert json.loads(r.stdout)["rows"][0]["batch_size"] == 2
    assert "interrupted: 1 of 2 batch size(s) measured" in r.stderr
