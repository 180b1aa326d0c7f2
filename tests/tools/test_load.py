"""``gpufleet load`` tells the truth: exit codes against a dead port and an all-500 server, error samples,
the connection error named plainly, the live progress line, and nothing but JSON with --json."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from gpufleet.tools.load import Progress, format_report, run_load
from tests.e2e.serving import ROOT, free_port, wait_ready


def gpufleet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpufleet", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


GRPC_PORT = [0, 0]  # the failing server's HTTP and gRPC ports
try:
    import grpc  # noqa: F401

    HAS_GRPC = True
except ImportError:
    HAS_GRPC = False


def test_dead_port_fails_at_once_with_a_plain_message():
    port = free_port()  # nothing listens there
    p = gpufleet("load", f"http://127.0.0.1:{port}", "--duration", "30", "--warmup", "0")
    assert p.returncode == 1, p
    assert p.stderr.strip() == f"error: cannot connect to 127.0.0.1:{port}: connection refused"
    assert p.stdout == ""


@pytest.fixture(scope="module")
def failing_server(tmp_path_factory):
    """A real ``gpufleet serve`` of a model that always raises."""
    port = free_port()
    GRPC_PORT[:] = [port, free_port()]
    grpc_args = ["--grpc-port", str(GRPC_PORT[1])] if HAS_GRPC else []
    yield from _serving(tmp_path_factory, "tests/tools/failing_model.py:AlwaysFails", port, *grpc_args)


def _serving(tmp_path_factory, model: str, port: int, *args: str):
    """``gpufleet serve MODEL`` on ``port`` until the fixture ends; its log goes to a file (one line per 500: a
    pipe nobody reads would fill up and stall the server)."""
    log = (tmp_path_factory.mktemp("server") / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "gpufleet", "serve", model, "--port", str(port), "--cpu-devices",
                             "1", "--log-level", "error", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_all_500_server_exits_1_and_shows_the_error_body(failing_server):
    p = gpufleet("load", failing_server, "-c", "4", "--duration", "1", "--warmup", "0", "--payload",
                 "file:tests/tools/item.json")
    assert p.returncode == 1, p
    assert "Errors: 500: " in p.stdout and "Error samples (first distinct):" in p.stdout
    assert "this model always fails (test)" in p.stdout  # the server's JSON error body, as sent
    assert "requests failed (100.00%, above --max-error-rate 0.00%)" in p.stderr


def test_all_500_json_mode_is_only_json(failing_server):
    p = gpufleet("load", failing_server, "-c", "2", "--duration", "0.5", "--warmup", "0", "--json", "--progress",
                 "--payload", "file:tests/tools/item.json")
    assert p.returncode == 1
    report = json.loads(p.stdout)
    assert report["ok"] == 0 and report["error_rate"] == 1.0 and report["errors"]["500"] > 0
    assert sum(report["errors"].values()) == report["requests"]
    assert any("always fails" in s for s in report["error_samples"]) and len(report["error_samples"]) <= 5
    assert "req/s" not in p.stderr  # --json wins over --progress


def test_max_error_rate_lets_a_run_pass(failing_server):
    p = gpufleet("load", failing_server, "-c", "2", "--duration", "0.5", "--warmup", "0",
                 "--max-error-rate", "1", "--payload", "file:tests/tools/item.json")
    assert p.returncode == 0, p


def test_progress_line_while_it_runs(failing_server):
    out = io.StringIO()
    report = run_load(failing_server, concurrency=2, duration=1.6, warmup=0.6, payload="file:tests/tools/item.json",
                      progress=Progress(out))
    lines = out.getvalue().splitlines()  # not a TTY: one line per second instead of a line rewritten in place
    assert len(lines) >= 2, lines
    assert lines[0].startswith("warm-up") and lines[-1].startswith("measure"), lines
    assert all("req/s" in line and "errors" in line and "p99" in line for line in lines)
    assert report["requests"] > 0


def test_progress_with_client_processes(failing_server):
    out = io.StringIO()
    report = run_load(failing_server, concurrency=2, duration=2.5, warmup=0, processes=2,
                      payload="file:tests/tools/item.json", progress=Progress(out))
    assert report["processes"] == 2 and report["error_rate"] == 1.0
    assert "req/s" in out.getvalue()


@pytest.mark.skipif(not HAS_GRPC, reason="needs grpcio")
def test_over_grpc_through_the_client(failing_server):
    # --protocol grpc turns the URL into grpc://host:port; each ModelInfer fails (INTERNAL, counted as 500)
    p = gpufleet("load", f"127.0.0.1:{GRPC_PORT[1]}", "--protocol", "grpc", "--model", "AlwaysFails", "-c", "4",
                 "--duration", "1", "--warmup", "0", "--json", "--payload", "file:tests/tools/item.json")
    assert p.returncode == 1, p
    report = json.loads(p.stdout)
    assert report["url"].startswith("grpc://") and report["requests"] > 0 and report["errors"] == {
        "500": report["requests"]}
    assert any("INTERNAL" in s and "this model always fails (test)" in s for s in report["error_samples"])
    p = gpufleet("load", f"grpc://127.0.0.1:{GRPC_PORT[1]}", "-c", "2", "--duration", "1", "--warmup", "0")
    assert p.returncode == 2 and "needs --model" in p.stderr
    dead = free_port()
    p = gpufleet("load", f"grpc://127.0.0.1:{dead}", "--model", "m", "--duration", "30", "--warmup", "0")
    assert p.returncode == 1 and p.stderr.startswith("error: ") and "UNAVAILABLE" in p.stderr, p


@pytest.mark.skipif(not HAS_GRPC, reason="needs grpcio")
def test_jpegs_over_grpc_are_the_jpegs_themselves(tmp_path):
    """--payload jpeg224 over gRPC sends each JPEG as one [1, 1] BYTES item (as Triton's batching models want),
    not the JSON body /predict takes."""
    port, grpc_port = free_port(), free_port()
    with (tmp_path / "server.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gpufleet", "serve", "tests/tools/failing_model.py:JpegOnly",
                                 "--port", str(port), "--grpc-port", str(grpc_port), "--cpu-devices", "1",
                                 "--log-level", "error"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}")
            p = gpufleet("load", f"grpc://127.0.0.1:{grpc_port}", "--model", "JpegOnly", "--payload", "jpeg224",
                         "-c", "2", "--duration", "1", "--warmup", "0", "--json")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    report = json.loads(p.stdout)
    assert p.returncode == 0 and report["requests"] > 0 and report["errors"] == {}, report


def test_report_format_without_errors():
    report = {"mode": "closed-loop", "url": "u", "concurrency": 1, "processes": 1, "duration_s": 1.0,
              "warmup_s": 0, "requests": 3, "ok": 3, "rps": 3.0, "errors": {}, "error_rate": 0.0,
              "error_samples": [], "latency": {"p50_ms": 1, "p90_ms": 1, "p99_ms": 1, "max_ms": 1, "mean_ms": 1}}
    text = format_report(report)
    assert "Errors: none" in text and "samples" not in text


@pytest.fixture(scope="module")
def answering_server(tmp_path_factory):
    """A real ``gpufleet serve`` of a model that answers at once."""
    yield from _serving(tmp_path_factory, "benchmarks/noop_model.py:Ack", free_port())


@pytest.mark.parametrize(("processes", "to"), [(1, "terminal"), (2, "terminal"), (2, "parent")])
def test_ctrl_c_ends_the_run_early_and_reports_what_was_measured(answering_server, processes, to):
    import os
    import signal
    import time

    import httpx

    def served() -> int:
        return httpx.get(f"{answering_server}/stats", timeout=5).json()["total_requests"]

    before = served()
    # In a process group of its own, like a command typed in a terminal (Ctrl-C there reaches the whole group).
    proc = subprocess.Popen([sys.executable, "-m", "gpufleet", "load", answering_server, "-c", "4", "--processes",
                             str(processes), "--duration", "60", "--warmup", "0", "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while served() < before + 200 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    t0 = time.monotonic()
    if to == "parent":  # the parent passes it on to its client processes
        proc.send_signal(signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 30, "the run went on after Ctrl-C"
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted after" in stderr, stderr
    report = json.loads(stdout)
    assert report["interrupted"] and report["processes"] == processes
    assert report["ok"] > 0 and report["requests"] == report["ok"] and 0 < report["duration_s"] < 60
    assert report["rps"] > 0 and report["latency"]["p99_ms"] > 0
