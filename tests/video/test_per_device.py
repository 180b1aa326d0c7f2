"""A video job as one worker process per device (``process_per_gpu``), on two CPU devices."""

from __future__ import annotations

import json

import pytest

from gpufleet.errors import ConfigError, GpufleetError
from gpufleet.video import VideoConfig, run
from gpufleet.video.per_device import plan

OPTS = {"runtime": "onnx", "batch_size": 4, "progress": False}


def _frames(path) -> list[int]:
    with open(path) as fh:
        return [json.loads(line)["frame"] for line in fh]


def test_plan_deals_inputs_round_robin_and_auto_keeps_cpu_in_process() -> None:
    cfg = VideoConfig(cpu_devices=2, process_per_gpu=True)
    shares = plan(["a.mp4", "b.mp4", "c.mp4"], cfg, None)
    assert [(label, idx) for label, _, idx in shares] == [("cpu:0", [0, 2]), ("cpu:1", [1])]
    assert all(c.cpu_devices == 1 and c.process_per_gpu is False and c.progress is False for _, c, _ in shares)
    assert plan(["a.mp4", "b.mp4"], VideoConfig(cpu_devices=2), None) is None  # auto: GPUs only
    assert plan(["a.mp4"], cfg, None) is None  # one input: nothing to share out
    assert plan(["a.mp4", "b.mp4"], VideoConfig(cpu_devices=1, process_per_gpu=True), None) is None
    with pytest.raises(ConfigError, match="on_frame"):
        plan(["a.mp4", "b.mp4"], cfg, lambda r: None)
    with pytest.raises(ConfigError, match="pickles"):
        plan(["a.mp4", "b.mp4"], VideoConfig(cpu_devices=2, process_per_gpu=True, model=lambda b: b), None)


def test_two_worker_processes_write_every_stream_in_order(clips, tmp_path) -> None:
    inputs = [str(clips["text"]), str(clips["small"]), str(clips["text"]), str(tmp_path / "missing.mp4")]
    ended: list[str] = []
    summary = run(inputs, "textdet", jsonl=str(tmp_path / "f.jsonl"), cpu_devices=2, process_per_gpu=True,
                  segments=1, on_stream_end=lambda e: ended.append(e.stream), **OPTS)
    assert summary["processes"] == 2 and sorted(summary["devices"]) == ["cpu:0", "cpu:0"]
    rows = {r["stream"]: r for r in summary["inputs"]}
    assert [r["stream"] for r in summary["inputs"]] == ["text", "small", "text-2", "missing"]  # input order
    assert rows["missing"]["status"] == "failed" and rows["missing"]["error"].endswith("no such file")
    assert summary["exit_code"] == 1 and summary["failed"] == 1 and summary["frames"] == 40 + 30 + 40
    for name, n in (("text", 40), ("small", 30), ("text-2", 40)):
        assert rows[name]["status"] == "ok" and rows[name]["frames"] == n
        assert _frames(tmp_path / f"f.{name}.jsonl") == list(range(n))
    assert sorted(ended) == ["missing", "small", "text", "text-2"]
    assert {g["device"] for g in summary["per_device"]} == {"cpu:0"}  # each worker's own single device
    assert sum(g["total_requests"] for g in summary["per_device"]) == 110
    assert summary["fps"] > 0 and summary["cpu_s"] > 0
    procs = summary["per_process"]  # each worker's own window beside the union's
    assert len(procs) == 2 and sum(p["frames"] for p in procs) == 110 and min(p["started_s"] for p in procs) == 0
    assert all(0 < p["elapsed_s"] <= summary["elapsed_s"] + 0.01 and p["fps"] > 0 for p in procs)


def test_a_model_that_fails_everywhere_raises_one_clear_error(clips, tmp_path) -> None:
    with pytest.raises(GpufleetError, match="no_such_module"):
        run([str(clips["text"]), str(clips["small"])], "no_such_module:Model", cpu_devices=2,
            process_per_gpu=True, **OPTS)
