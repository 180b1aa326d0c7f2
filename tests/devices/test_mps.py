"""MPS helpers and ``gpufleet mps``: a clear error without the binary, a fake binary for the happy path."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gpufleet.cli import app
from gpufleet.devices import Device, mps, nvml
from gpufleet.errors import DeviceError

GPU = Device(index=0, kind="cuda", name="NVIDIA H100", uuid="GPU-1")


@pytest.fixture
def no_binary(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))


def test_status_without_binary_exits_nonzero_with_one_line(tmp_path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "gpufleet", "mps", "status"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nvidia-cuda-mps-control not found" in lines[0]


def test_start_stop_without_binary_raise(no_binary) -> None:
    for fn in (mps.start, mps.stop, lambda: mps.status(require_binary=True)):
        with pytest.raises(DeviceError, match="not found on PATH"):
            fn()
    assert mps.status()["binary"] is None


def test_cli_with_a_fake_daemon(monkeypatch, tmp_path) -> None:
    log = tmp_path / "calls"
    fake = tmp_path / "nvidia-cuda-mps-control"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\nif [ "$1" != "-d" ]; then read cmd; echo "$cmd" >> {log}; '
                    'echo 4242; fi\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    state = {"running": False}
    monkeypatch.setattr(nvml, "mps_running", lambda **_: state["running"])
    runner = CliRunner()
    res = runner.invoke(app, ["mps", "status"])
    assert res.exit_code == 0 and "not running" in res.output
    real_run = subprocess.run

    def run(cmd, **kw):
        out = real_run(cmd, **kw)
        if cmd[-1] == "-d":
            state["running"] = True
        elif "quit" in kw.get("input", ""):
            state["running"] = False
        return out

    monkeypatch.setattr(mps.subprocess, "run", run)
    res = runner.invoke(app, ["mps", "start"])
    assert res.exit_code == 0 and "running" in res.output and "servers 4242" in res.output
    res = runner.invoke(app, ["mps", "stop", "--json"])
    assert res.exit_code == 0 and '"running": false' in res.output
    assert "-d" in log.read_text() and "quit" in log.read_text()


def test_pool_mps_status(monkeypatch) -> None:
    cpu = [Device(index=0, kind="cpu")]
    assert mps.pool_mps_status("auto", cpu) == {"mode": "auto", "running": False, "used": False}
    monkeypatch.setattr(nvml, "mps_running", lambda **_: False)
    assert mps.pool_mps_status("auto", [GPU])["running"] is False
    with pytest.raises(DeviceError, match="gpufleet mps start"):
        mps.pool_mps_status("on", [GPU])
    monkeypatch.setattr(nvml, "mps_running", lambda **_: True)
    assert mps.pool_mps_status("auto", [GPU]) == {"mode": "auto", "running": True, "used": True}
    assert mps.pool_mps_status("off", [GPU])["used"] is False
