"""The served figure of ``gpufleet bench --http``: the bench's model behind a real ``gpufleet serve`` process on
127.0.0.1, measured with the closed-loop load generator (each request: JSON with a base64 JPEG).

The server runs the same classifier, precision, image size, CUDA graphs and devices as the pooled run, with
the row's batch size as its max batch size, so raw, pooled and served figures sit side by side.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from gpufleet.tools.served import ServedModel

__all__ = ["measure_served"]

_MODEL_FILE = """\
from gpufleet.models.resolve import resolve_model

MODEL = resolve_model({name!r}, image_size={size}, precision={precision!r}, cuda_graphs={graphs},
                      compile={compile})
"""


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
        flags = ["--max-batch-size", str(batch_size), "--max-wait-ms", "2", "--http-workers", str(spec.http_workers),
                 "--backend", spec.backend, "--workers-per-device", str(spec.workers_per_device), "--max-queue",
                 "65536", "--log-level", "warning"]
        if spec.devices is not None:
            flags += ["--gpus", str(spec.devices)]
        if spec.cpu_devices is not None:
            flags += ["--cpu-devices", str(spec.cpu_devices)]
        with ServedModel(f"{model_file}:MODEL", flags) as served:
            rep = run_load(f"{served.url}/predict", concurrency=spec.http_concurrency, duration=spec.seconds,
                           warmup=min(2.0, spec.seconds / 2), payload="jpeg224", processes=spec.http_clients)
    lat = rep["latency"]
    return {"items_s": rep["rps"], "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "requests": rep["requests"],
            "errors": rep["errors"], "concurrency": spec.http_concurrency, "http_workers": spec.http_workers,
            "client_processes": rep["processes"], "client_cpu": rep.get("client_cpu")}
