"""One error style for every CLI mistake (an ``error:`` line, exit 2), ``--version`` and bare ``gpufleet``."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpufleet import __version__
from gpufleet.cli import app

ROOT = Path(__file__).resolve().parents[2]
ENVS = ("GPU_IDS", "GPUFLEET_GPUS", "GPUFLEET_CPU_DEVICES", "GPU_LOAD_BALANCE_STRATEGY", "GPUFLEET_BALANCER",
        "MAX_BATCH_SIZE", "GPUFLEET_MAX_BATCH_SIZE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENVS:
        monkeypatch.delenv(name, raising=False)


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


@pytest.mark.parametrize(("args", "says"), [
    (["serve", "--max-batch-size", "abc"], "'--max-batch-size'"),
    (["load"], "Missing argument"),
    (["load", "http://127.0.0.1:9", "--bogus"], "No such option: --bogus"),
    (["nonsense"], "No such command 'nonsense'"),
    (["video", "x.mp4", "--every-nth", "0"], "'--every-nth'"),
])
def test_parse_errors_are_one_error_line_and_exit_2(args, says):
    r = run(*args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.stderr
    assert "╭" not in r.output and "Traceback" not in r.output


@pytest.mark.parametrize(("var", "value", "says"), [
    ("GPU_LOAD_BALANCE_STRATEGY", "fastest", "error: GPU_LOAD_BALANCE_STRATEGY=fastest: unknown balancer 'fastest'"),
    ("GPU_IDS", "7", "error: GPU_IDS=7: device index 7 does not exist"),
    ("MAX_BATCH_SIZE", "-3", "error: MAX_BATCH_SIZE=-3: max_batch_size must be >= 0"),
    ("MAX_BATCH_SIZE", "lots", "error: MAX_BATCH_SIZE='lots' is not a valid int"),
    ("GPUFLEET_SWITCH_INTERVAL_MS", "0", "error: GPUFLEET_SWITCH_INTERVAL_MS must be a positive number"),
])
def test_env_errors_name_the_variable(var, value, says):
    r = run("serve", "--cpu-devices", "2", "--port", "1", env={var: value})
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith(says), r.stderr


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"gpufleet {__version__}"


def test_bare_gpufleet_prints_help_and_exits_0():
    r = run()
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.stdout and "serve" in r.stdout and "load" in r.stdout


def test_the_command_list_shows_each_first_paragraph_as_one_line():
    r = run("--help", env={"COLUMNS": "240"})
    assert r.exit_code == 0, r.output
    row = next(line for line in r.stdout.splitlines() if " demo " in line)
    assert "check the detections against ground truth." in row, r.stdout


def test_real_entry_point_uses_the_same_style():
    """``python -m gpufleet`` (what the console script runs): the error line names ``gpufleet``."""
    env = {k: v for k, v in os.environ.items() if k not in ENVS}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.run([sys.executable, "-m", "gpufleet", "serve", "--max-batch-size", "abc"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.startswith("error: Invalid value for '--max-batch-size'"), p.stderr
    assert "(see 'gpufleet serve --help')" in p.stderr


def test_help_into_a_closed_pipe_ends_without_a_traceback():
    """``gpufleet bench --help | head -1``: the reader goes away mid-output; no traceback follows."""
    env = {k: v for k, v in os.environ.items() if k not in ENVS}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.Popen([sys.executable, "-m", "gpufleet", "bench", "--help"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, bufsize=0)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # before the help is written: its write fails with a broken pipe
    err = p.stderr.read()
    assert p.wait(timeout=120) != 0
    assert "Traceback" not in err, err


def _line_of(text: str) -> int:
    path = ROOT / "tests" / "tools" / "failing_model.py"
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_setup_failure_points_at_the_users_file_and_line():
    r = run("serve", "tests/tools/failing_model.py:BadSetup", "--cpu-devices", "1", "--port", "1")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()[-2:]
    assert lines[0] == "error: worker-0@cpu:0 failed in setup: KeyError: 'weights'"
    line = _line_of('return {}["weights"]')
    assert lines[1] == f'  at tests/tools/failing_model.py:{line} in load_weights: return {{}}["weights"]'


def test_describe_reads_a_worker_process_traceback():
    """With --backend process the model's traceback arrives as text (engine.wire.RemoteTraceback)."""
    from gpufleet.cli.errors import describe
    from gpufleet.engine.wire import RemoteTraceback
    from gpufleet.errors import WorkerError

    remote = RemoteTraceback(
        'Traceback (most recent call last):\n'
        f'  File "{Path(sysconfig.get_paths()["purelib"]) / "pkg" / "x.py"}", line 3, in run\n    model.setup(device)\n'
        '  File "/home/me/mymodel.py", line 12, in setup\n    self.w = load("w.bin")\n'
        '  File "/home/me/mymodel.py", line 29, in load\n    return {}["weights"]\n'
        "KeyError: 'weights'\n")
    err = WorkerError("worker-0@cuda:0 failed in setup: KeyError: 'weights'")
    err.__cause__ = remote
    assert describe(err).splitlines()[1] == '  at /home/me/mymodel.py:29 in load: return {}["weights"]'
    assert describe(WorkerError("plain")) == "plain"
    library_only = WorkerError("failed")
    library_only.__cause__ = RemoteTraceback(
        f'  File "{Path(sysconfig.get_paths()["purelib"]) / "pkg" / "x.py"}", line 3, in run\n    f()\n')
    assert describe(library_only) == "failed"  # no frame of the user's: nothing to point at
