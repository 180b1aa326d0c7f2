"""``gpufleet demo`` runs the video pipeline: annotated mp4, frame-ordered JSONL, recall vs ground truth."""

from __future__ import annotations

import json

import pytest

av = pytest.importorskip("av")


def test_run_demo_on_two_cpu_devices(tmp_path) -> None:
    from gpufleet.tools.demo import run_demo

    s = run_demo(tmp_path, frames=24, size=(320, 180), cpu_devices=2, runtime="onnx", max_batch_size=4)
    assert s["recall"] >= 0.8 and s["frames"] == 24 and s["exit_code"] == 0
    assert s["devices"] == ["cpu:0", "cpu:1"] and s["inputs"][0]["segments"] == 2
    lines = [json.loads(x) for x in open(s["jsonl"])]
    assert [r["frame"] for r in lines] == list(range(24))
    with av.open(s["video"]) as c:
        assert sum(1 for _ in c.decode(video=0)) == 24
    assert json.loads((tmp_path / "summary.json").read_text())["recall"] == s["recall"]


def test_demo_cli_json(tmp_path) -> None:
    from typer.testing import CliRunner

    from gpufleet.cli import app

    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--frames", "8", "--cpu-devices", "1",
                                   "--runtime", "onnx", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["recall"] >= 0.8
