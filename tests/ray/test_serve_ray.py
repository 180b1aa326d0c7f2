"""``gpufleet serve --backend ray``: the server's front end here, the model in a Ray actor; /predict and KServe v2
answer, SIGTERM drains and exits 0; the CLI's other Ray entry points."""

from __future__ import annotations

import signal

import httpx
import pytest
from typer.testing import CliRunner

from gpufleet.cli import app
from tests.e2e.serving import ROOT, free_port, start_server, wait_ready

pytest.importorskip("ray")

MODEL = f"{ROOT / 'tests' / 'server' / 'slow_model.py'}:SlowModel"


@pytest.mark.timeout(240)
def test_serve_on_ray_answers_predict_and_kserve_v2() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # No cluster to join: serve starts a local Ray, which has no GPU here; --cpu-devices 1 makes one CPU actor.
    proc = start_server(MODEL, port, "--backend", "ray", env={"SLOW_MODEL_S": "0.01", "RAY_ADDRESS": ""})
    try:
        wait_ready(proc, base, timeout_s=180)
        assert httpx.post(f"{base}/predict", json={"x": 1}, timeout=60).json() == {"echo": {"x": 1}}
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [3]}]}
        r = httpx.post(f"{base}/v2/models/SlowModel/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
        stats = httpx.get(f"{base}/stats", timeout=30).json()
        assert stats["backend"] == "ray" and stats["per_gpu_stats"][0]["node"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_video_refuses_the_ray_backend_with_a_reason() -> None:
    result = CliRunner().invoke(app, ["video", "x.mp4", "--backend", "ray"])
    assert result.exit_code == 2
    assert "does not run on --backend ray" in result.output and "each node" in result.output
