"""``gpufleet video``: the --json summary, exit codes, and Ctrl-C (SIGINT) on a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
from typer.testing import CliRunner

from gpufleet.cli import app

SLOW = str(Path(__file__).with_name("slow_model.py")) + ":Slow"


def test_video_json_summary_fields(clips, tmp_path) -> None:
    res = CliRunner().invoke(app, ["video", str(clips["small"]), "--cpu-devices", "2", "--runtime", "onnx",
                                   "--batch-size", "4", "--jsonl", str(tmp_path / "f.jsonl"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    for key in ("frames", "fps", "elapsed_s", "devices", "decoders", "stages_s", "stages_ms_per_frame",
                "cpu_cores_used", "cpu_s", "inputs", "exit_code", "per_device", "avg_batch_size"):
        assert key in summary, key
    assert set(summary["stages_s"]) == {"decode", "preprocess", "infer", "postprocess", "draw", "encode"}
    assert summary["frames"] == 30 and summary["inputs"][0]["decoder"] == "cpu"
    assert 0 < summary["cpu_cores_used"] <= (os.cpu_count() or 2) + 0.5


def test_failed_input_exits_nonzero_with_one_line(clips, tmp_path) -> None:
    res = CliRunner().invoke(app, ["video", str(clips["small"]), str(tmp_path / "nope.mp4"), "--model", SLOW,
                                   "--cpu-devices", "1", "--batch-size", "8", "--jsonl", str(tmp_path / "f.jsonl"),
                                   "--json"])
    assert res.exit_code == 1
    assert f"error: {tmp_path / 'nope.mp4'}: no such file" in res.stderr
    assert sum(1 for _ in open(tmp_path / "f.small.jsonl")) == 30


SLOW_SETUP = str(Path(__file__).parents[1] / "tools" / "failing_model.py") + ":SlowSetup"


def test_missing_file_fails_before_the_model_loads(tmp_path) -> None:
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, ["video", str(tmp_path / "missing.mp4"), "--model", SLOW_SETUP,
                                   "--cpu-devices", "1"])
    assert time.perf_counter() - t0 < 2.0  # SlowSetup's setup sleeps 5 s
    assert res.exit_code == 2
    assert res.stderr == f"error: {tmp_path / 'missing.mp4'}: no such file\n"
    assert res.stdout == ""  # no table of zeros


def test_no_readable_input_loads_no_model_and_prints_no_table(clips) -> None:
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, ["video", str(clips["bad"]), "--model", SLOW_SETUP, "--cpu-devices", "1"])
    assert time.perf_counter() - t0 < 4.0
    assert res.exit_code == 1
    assert res.stderr.startswith(f"error: {clips['bad']}: not a video"), res.stderr
    assert res.stdout == ""


def test_sigint_leaves_a_playable_file(clips, tmp_path) -> None:
    out, jl = tmp_path / "cut.mp4", tmp_path / "cut.jsonl"
    cmd = [sys.executable, "-m", "gpufleet", "video", str(clips["text"]), "--model", SLOW, "--cpu-devices", "1",
           "--batch-size", "1", "--segments", "1", "--out", str(out), "--jsonl", str(jl), "--json"]
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps it ignored:
    # give the child the default disposition so Ctrl-C raises KeyboardInterrupt in it however pytest was run.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[2],
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if jl.exists() and sum(1 for _ in open(jl)) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    summary = json.loads(stdout)
    assert summary["interrupted"]
    n = sum(1 for _ in open(jl))
    assert 3 <= n < 40
    assert summary["frames"] == n  # the summary counts the frames written, not those decoded and queued
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == n


def test_process_per_gpu_flag_runs_one_worker_process_per_device(clips, tmp_path) -> None:
    res = CliRunner().invoke(app, ["video", str(clips["small"]), str(clips["text"]), "--model", SLOW,
                                   "--cpu-devices", "2", "--batch-size", "8", "--process-per-gpu",
                                   "--jsonl", str(tmp_path / "f.jsonl"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["processes"] == 2 and summary["frames"] == 70
    assert [r["stream"] for r in summary["inputs"]] == ["small", "text"]
    assert sum(1 for _ in open(tmp_path / "f.text.jsonl")) == 40


@pytest.mark.parametrize("to", ["parent", "terminal"])
def test_sigint_with_a_process_per_device_leaves_every_file_playable(clips, tmp_path, to) -> None:
    out, jl = tmp_path / "cut.mp4", tmp_path / "cut.jsonl"
    cmd = [sys.executable, "-m", "gpufleet", "video", str(clips["text"]), str(clips["small"]), "--model", SLOW,
           "--cpu-devices", "2", "--process-per-gpu", "--batch-size", "1", "--segments", "1", "--out", str(out),
           "--jsonl", str(jl), "--json"]
    # In a process group of its own, as a command started from a terminal, which sends Ctrl-C to the whole group.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[2],
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), start_new_session=True)
    lines = {name: tmp_path / f"cut.{name}.jsonl" for name in ("text", "small")}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if all(p.exists() and sum(1 for _ in open(p)) >= 3 for p in lines.values()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    if to == "parent":
        proc.send_signal(signal.SIGINT)  # it passes the interrupt on to its workers
    else:  # the workers get it twice: from the terminal and from the parent, maybe while closing their outputs
        os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr, stderr.decode()
    summary = json.loads(stdout)
    assert summary["interrupted"] and summary["processes"] == 2
    for name, total in (("text", 40), ("small", 30)):
        n = sum(1 for _ in open(lines[name]))
        assert 3 <= n < total
        with av.open(str(tmp_path / f"cut.{name}.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == n
