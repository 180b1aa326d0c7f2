"""The served figure of ``gpufleet bench --http``: the bench's model behind a real ``gpufleet serve`` process on
127.0.0.1, measured with the closed-loop load generator (each request: JSON with a base64 JPEG).

The server runs the same classifier, precision, image size, CUDA graphs and devices as the pooled run, with
the row's batch size as its max batch size, so raw, pooled and served figures sit side by side.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpufleet.errors import GpufleetError

__all__ = ["measure_served"]

_READY_TIMEOUT_S = 600.0  # model load, warm-up and CUDA-graph capture of every bucket on a cold machine
_MODEL_FILE = """\
from gpufleet.models.resolve import resolve_model

MODEL = resolve_model({name!r}, image_size={size}, precision={precision!r}, cuda_graphs={graphs},
                      compile={compile})
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise GpufleetError(f"the bench server exited with code {proc.returncode}: {' | '.join(tail)}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise GpufleetError(f"the bench server was not ready after {_READY_TIMEOUT_S:.0f}s")


def measure_served(spec: Any, batch_size: int) -> dict[str, Any]:
    """Serve ``spec``'s model with max batch ``batch_size`` and return req/s, p50/p99 and errors.

    ``spec`` is a :class:`gpufleet.tools.bench.BenchSpec`; its ``http_*`` fields set the front ends, the load's
    concurrency and client processes; the load runs ``spec.seconds`` after a short warm-up.
    """
    from gpufleet.tools.load import run_load

    with tempfile.TemporaryDirectory(prefix="gpufleet-bench-") as tmp:
        model_file = Path(tmp) / "bench_model.py"
        model_file.write_text(_MODEL_FILE.format(name=spec.model, size=spec.image_size, precision=spec.precision,
                                                 graphs=spec.cuda_graphs, compile=spec.compile))
        port = _free_port()
        cmd = [sys.executable, "-m", "gpufleet", "serve", f"{model_file}:MODEL", "--host", "127.0.0.1",
               "--port", str(port), "--max-batch-size", str(batch_size), "--max-wait-ms", "2",
               "--http-workers", str(spec.http_workers), "--backend", spec.backend,
               "--workers-per-device", str(spec.workers_per_device), "--max-queue", "65536", "--log-level",
               "warning"]
        if spec.devices is not None:
            cmd += ["--gpus", str(spec.devices)]
        if spec.cpu_devices is not None:
            cmd += ["--cpu-devices", str(spec.cpu_devices)]
        log = Path(tmp) / "serve.log"
        url = f"http://127.0.0.1:{port}"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_ready(proc, url, log)
            rep = run_load(f"{url}/predict", concurrency=spec.http_concurrency, duration=spec.seconds,
                           warmup=min(2.0, spec.seconds / 2), payload="jpeg224", processes=spec.http_clients)
        finally:
            proc.terminate()  # SIGTERM: the server drains and exits 0
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    lat = rep["latency"]
    return {"items_s": rep["rps"], "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "requests": rep["requests"],
            "errors": rep["errors"], "concurrency": spec.http_concurrency, "http_workers": spec.http_workers,
            "client_processes": rep["processes"], "client_cpu": rep.get("client_cpu")}
