"""``gpufleet top``: one frame against a live server and locally; the live view in a real tmux pane."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from gpufleet.cli import app
from gpufleet.cli.top import gather_server, render


def test_once_against_a_server(url: str) -> None:
    r = CliRunner().invoke(app, ["load", url, "--burst", "8"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["top", url, "--once", "--interval", "0.2"])
    assert r.exit_code == 0, r.output
    assert "gpufleet top" in r.output and "cpu:0" in r.output and "cpu:1" in r.output


def test_rates_come_from_two_readings(url: str) -> None:
    first = gather_server(url, None, None)
    assert {r["device"] for r in first["rows"]} == {"cpu:0", "cpu:1"}
    assert all(r["rps"] is None for r in first["rows"])
    CliRunner().invoke(app, ["load", url, "--burst", "6"])
    second = gather_server(url, None, first)
    assert all(r["rps"] is not None and r["rps"] >= 0 for r in second["rows"])
    assert sum(r["total_requests"] for r in second["rows"]) >= sum(r["total_requests"] for r in first["rows"]) + 6
    render(second)  # renders without error


def test_local_once_and_bad_url() -> None:
    r = CliRunner().invoke(app, ["top", "--once", "--cpu-devices", "2", "--interval", "0.1"])
    assert r.exit_code == 0 and "local devices" in r.output and "cpu:1" in r.output
    r = CliRunner().invoke(app, ["top", "ftp://x"])
    assert r.exit_code == 2 and "http://" in r.output
    r = CliRunner().invoke(app, ["top", "http://127.0.0.1:9", "--once"])
    assert r.exit_code == 2 and "cannot reach" in r.output


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
@pytest.mark.timeout(60)
def test_live_view_in_tmux_refreshes_and_quits_on_q(url: str, tmp_path) -> None:
    session = f"gftop{int(time.time() * 1000) % 10**8}"
    cmd = f"{sys.executable} -m gpufleet top {url} --interval 0.3"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "30", cmd], check=True)
    try:
        screen = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "req/s" not in screen:
            time.sleep(0.3)
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True).stdout
        (tmp_path / "top.txt").write_text(screen)
        assert "gpufleet top" in screen and "cpu:0" in screen and "q quits" in screen, screen
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("gpufleet top did not quit on q")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
