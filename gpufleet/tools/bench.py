"""``gpufleet bench``: the raw model ceiling beside the same model through ``Pool.map``, and with ``http``
served over HTTP (JSON requests with a base64 JPEG).

Raw: the module alone, input already on the device in the compute dtype. Pooled: uint8 CHW images on the
host go through ``Pool.map`` (batching, pinned staging, host→device copy, normalisation on the device).
Served: JSON requests with a base64 JPEG to ``gpufleet serve`` of the same model (:mod:`gpufleet.tools.bench_served`).
"""

from __future__ import annotations

import itertools
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from gpufleet.devices import Device, select
from gpufleet.engine import Pool
from gpufleet.models.resolve import resolve_model
from gpufleet.models.torch_model import resolve_dtype
from gpufleet.models.zoo.classifier import ImageClassifier, build_module

__all__ = ["BenchSpec", "ImageClassifier", "build_module", "pool_workload", "print_report", "run_bench"]

@dataclass(frozen=True, kw_only=True)
class BenchSpec:
    model: str = "resnet50"
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64, 128, 256)
    precision: str = "auto"
    image_size: int = 224
    seconds: float = 5.0
    devices: str | None = None
    cpu_devices: int | None = None
    workers_per_device: int = 1
    raw: bool = True
    pool: bool = True
    cuda_graphs: bool = False
    compile: bool = False
    backend: str = "thread"
    scale: bool = False
    http: bool = False  # also serve the model (a real `gpufleet serve` process) and load it over HTTP
    http_concurrency: int = 64
    http_workers: int = 1
    http_clients: int = 1


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time_steps(step: Callable[[], Any], dev: torch.device, bs: int, seconds: float) -> dict[str, float]:
    """Warm up ``step``, time ~30% of ``seconds`` of synchronised single steps (latency), then the rest as
    back-to-back steps with one final sync (throughput)."""
    for _ in range(3):
        step()
    _sync(dev)
    lat = []
    t_end = time.perf_counter() + seconds * 0.3
    while time.perf_counter() < t_end or len(lat) < 3:
        t0 = time.perf_counter()
        step()
        _sync(dev)
        lat.append(time.perf_counter() - t0)
    iters = max(3, int(seconds * 0.7 / statistics.median(lat)))
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(dev)
    elapsed = time.perf_counter() - t0
    lat.sort()
    return {"items_s": iters * bs / elapsed, "p50_ms": statistics.median(lat) * 1e3,
            "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3}


def _raw(module: torch.nn.Module, dev: torch.device, dtype: torch.dtype, bs: int, size: int,
         seconds: float, channels_last: bool) -> dict[str, float]:
    x = torch.randn(bs, 3, size, size, device=dev).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return _time_steps(lambda: module(x), dev, bs, seconds)


def _raw_predict(model: Any, dev: torch.device, bs: int, size: int, seconds: float) -> dict[str, float]:
    """The ceiling of a model without a torch module (the ONNX Runtime ones): ``predict`` on a ready batch."""
    item = model.preprocess(torch.zeros((3, size, size), dtype=torch.uint8))
    batch = [item] * bs
    return _time_steps(lambda: model.predict(batch), dev, bs, seconds)


def _ceiling(row: dict[str, Any]) -> float:
    """The better of the raw loops (eager, CUDA-graph replay): what the pool is measured against."""
    return max(row["raw"]["items_s"], row.get("raw_graph", {}).get("items_s", 0.0))


def _raw_graph(module: torch.nn.Module, dev: torch.device, dtype: torch.dtype, bs: int, size: int,
               seconds: float, channels_last: bool) -> dict[str, float]:
    """The model's ceiling when the whole forward is one CUDA graph replay (input already on the device)."""
    from gpufleet.models.cuda_graphs import GraphCache

    def fwd(x: torch.Tensor) -> torch.Tensor:
        return module(x.contiguous(memory_format=torch.channels_last) if channels_last else x)

    cap = GraphCache(fwd, dev, (bs,), buffers=1).get(bs, torch.Size((3, size, size)), dtype)
    return _time_steps(cap.graph.replay, dev, bs, seconds)


def pool_workload(spec: BenchSpec, bs: int) -> tuple[list[torch.Tensor], Any]:
    """The pooled run's inputs (uint8 CHW images on the host) and its model, made for batches up to ``bs``."""
    size = spec.image_size
    g = torch.Generator().manual_seed(bs)
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g) for _ in range(min(512, bs * 8))]
    buckets = tuple(b for b in sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, bs}) if b <= bs)
    model = resolve_model(spec.model, image_size=size, precision=spec.precision, cuda_graphs=spec.cuda_graphs,
                          compile=spec.compile, batch_buckets=buckets, example_shape=(3, size, size),
                          example_dtype=torch.uint8, warmup_batch_sizes=buckets if spec.cuda_graphs else (bs,))
    return images, model


def _pooled(spec: BenchSpec, bs: int, expect_rate: float | None) -> dict[str, Any]:
    images, model = pool_workload(spec, bs)
    with Pool(model, spec.devices, cpu_devices=spec.cpu_devices, workers_per_device=spec.workers_per_device,
              backend=spec.backend, max_batch_size=bs, max_wait_ms=2.0, max_queue=1_000_000) as pool:
        for _ in pool.map(images[: bs * 4]):  # warm-up: every worker sees full batches
            pass
        rate = expect_rate or 0.0
        if not rate:  # estimate from a short run
            t0 = time.perf_counter()
            n = bs * 4
            for _ in pool.map(itertools.islice(itertools.cycle(images), n)):
                pass
            rate = n / (time.perf_counter() - t0)
        n = max(bs * 10, int(rate * spec.seconds))
        before = pool.stats()
        t0 = time.perf_counter()
        done = 0
        for _ in pool.map(itertools.islice(itertools.cycle(images), n)):
            done += 1
        elapsed = time.perf_counter() - t0
        st = pool.stats()
    batches = st["total_batches"] - before["total_batches"]
    e2e = st["stages"].get("e2e", {})
    return {"items_s": done / elapsed, "p50_ms": e2e.get("p50_ms", 0.0), "p99_ms": e2e.get("p99_ms", 0.0),
            "avg_batch": round(done / batches, 2) if batches else 0.0, "workers": st["num_workers"],
            "per_device": {g["device"]: g["total_requests"] for g in st["per_gpu_stats"]},
            "stages": {k: round(v["p50_ms"], 3) for k, v in st["stages"].items()}}


def _scale_specs(spec: BenchSpec, devices: list[Device]) -> list[tuple[int, BenchSpec]]:
    """The pooled runs of ``--scale``: the first 1, 2, 4 ... of the selected devices, then all of them."""
    counts = sorted({k for k in (1 << i for i in range(len(devices).bit_length())) if k <= len(devices)}
                    | {len(devices)})
    if not devices[0].is_cuda:
        return [(k, replace(spec, devices="cpu", cpu_devices=k)) for k in counts]
    return [(k, replace(spec, devices=",".join(str(d.index) for d in devices[:k]))) for k in counts]


def run_bench(spec: BenchSpec, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every batch size of ``spec``; returns a JSON-able report. ``on_step`` hears what is measured
    next (``"batch 8 (2 of 6): the model alone, ~5 s"``), for a progress display. Ctrl-C (``KeyboardInterrupt``)
    while the batch sizes are measured ends the run: the report holds the rows finished until then and says
    ``interrupted``."""
    step = on_step or (lambda _what: None)
    devices = select(spec.devices, cpu_devices=spec.cpu_devices)
    dev0 = devices[0]
    dtype = resolve_dtype(spec.precision, dev0)
    dev = torch.device(dev0.torch)
    module = None
    if spec.raw:
        step(f"loading {spec.model} on {dev0.label}")
        ref = resolve_model(spec.model, precision=spec.precision, compile=spec.compile, cuda_graphs=False,
                            image_size=spec.image_size)
        ref.setup(dev0)
        module = getattr(ref, "module", None)  # a torch module (classifiers); ONNX Runtime models have none
    rows = []
    interrupted = False
    try:
        for n, bs in enumerate(spec.batch_sizes, 1):
            row: dict[str, Any] = {"batch_size": bs}
            at = f"batch {bs} ({n} of {len(spec.batch_sizes)})"
            if spec.raw:
                step(f"{at}: the model alone, ~{spec.seconds:g} s")
            if spec.raw and module is None:
                row["raw"] = _raw_predict(ref, dev, bs, spec.image_size, spec.seconds)
            if module is not None:
                row["raw"] = _raw(module, dev, dtype, bs, spec.image_size, spec.seconds, ref._channels_last)
                if spec.cuda_graphs and dev.type == "cuda":
                    row["raw_graph"] = _raw_graph(module, dev, dtype, bs, spec.image_size, spec.seconds,
                                                  ref._channels_last)
            if spec.pool and spec.scale:
                per_raw = row["raw"]["items_s"] * spec.workers_per_device if "raw" in row else None
                row["scaling"] = []
                for k, sub in _scale_specs(spec, devices):
                    step(f"{at}: through the pool on {k} device(s)")
                    r = _pooled(sub, bs, per_raw * k if per_raw else None)
                    base = row["scaling"][0]["items_s"] if row["scaling"] else r["items_s"]
                    row["scaling"].append({"devices": k, **r, "speedup": round(r["items_s"] / base, 3)})
                row["pool"] = row["scaling"][-1]
                if "raw" in row:  # the pool's overhead: one device against its own ceiling
                    row["pool_vs_raw"] = round(row["scaling"][0]["items_s"] / row["raw"]["items_s"], 4)
                    row["pool_vs_ceiling"] = round(row["scaling"][0]["items_s"] / _ceiling(row), 4)
            elif spec.pool:
                step(f"{at}: through the pool on {len(devices)} device(s), ~{spec.seconds:g} s")
                raw_rate = row["raw"]["items_s"] * len(devices) * spec.workers_per_device if "raw" in row else None
                row["pool"] = _pooled(spec, bs, raw_rate)
                if "raw" in row:
                    per_device = row["pool"]["items_s"] / len(devices)
                    row["pool_vs_raw"] = round(per_device / row["raw"]["items_s"], 4)
                    row["pool_vs_ceiling"] = round(per_device / _ceiling(row), 4)
            if spec.http:
                from gpufleet.tools.bench_served import measure_served

                step(f"{at}: served over HTTP (starting gpufleet serve)")
                row["served"] = measure_served(spec, bs)
            rows.append(row)
    except KeyboardInterrupt:  # Ctrl-C: the rows measured until then are the report; the one under way is dropped
        interrupted = True
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": f"{dev0.name} ({dev0.label})", "devices": [d.label for d in devices],
        "model": spec.model, "precision": str(dtype).replace("torch.", ""), "image_size": spec.image_size,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "workers_per_device": spec.workers_per_device, "backend": spec.backend, "cuda_graphs": spec.cuda_graphs,
        "compile": spec.compile,
        **({"http": {"concurrency": spec.http_concurrency, "http_workers": spec.http_workers,
                     "client_processes": spec.http_clients}} if spec.http else {}),
        "rows": rows,
        "interrupted": interrupted,
    }


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]gpufleet bench[/] {report['model']} {report['precision']} {report['image_size']}px on "
                  f"{report['device']} · pool devices {', '.join(report['devices'])} · torch {report['torch']} "
                  f"cuda {report['cuda']} · {report['date']}")
    graphs = any("raw_graph" in r for r in report["rows"])
    console.print(f"pool: backend={report.get('backend', 'thread')} cuda_graphs={report.get('cuda_graphs')} "
                  f"compile={report.get('compile')} workers/device={report['workers_per_device']}")
    served = any("served" in r for r in report["rows"])
    table = Table("batch", "raw items/s", "raw p50 ms", *(["raw graph items/s"] if graphs else []), "pool items/s",
                  "pool p50 ms", "pool p99 ms", "avg batch",
                  "pool/raw per device", "pool/best raw",
                  *(["served req/s", "served p50 ms", "served p99 ms"] if served else []))
    for r in report["rows"]:
        raw, pool, srv = r.get("raw", {}), r.get("pool", {}), r.get("served", {})

        def f(d: dict, k: str, spec: str = ",.0f") -> str:
            return format(d[k], spec) if k in d else "-"

        extra = [f(r["raw_graph"], "items_s")] if graphs and "raw_graph" in r else (["-"] if graphs else [])
        http = [f(srv, "items_s"), f(srv, "p50_ms", ".2f"), f(srv, "p99_ms", ".2f")] if served else []
        table.add_row(str(r["batch_size"]), f(raw, "items_s"), f(raw, "p50_ms", ".2f"), *extra, f(pool, "items_s"),
                      f(pool, "p50_ms", ".2f"), f(pool, "p99_ms", ".2f"), f(pool, "avg_batch", ".1f"),
                      f"{r['pool_vs_raw']:.1%}" if "pool_vs_raw" in r else "-",
                      f"{r['pool_vs_ceiling']:.1%}" if "pool_vs_ceiling" in r else "-", *http)
    console.print(table)
    if served:
        h = report.get("http", {})
        errors = {k: v for r in report["rows"] for k, v in r.get("served", {}).get("errors", {}).items()}
        console.print(f"served: gpufleet serve with {h.get('http_workers', 1)} front end(s), closed-loop load at "
                      f"concurrency {h.get('concurrency')} from {h.get('client_processes', 1)} client process(es), "
                      f"JSON + base64 JPEG; errors {errors or 'none'}")
    if any("scaling" in r for r in report["rows"]):
        scaling = Table("batch", "devices", "pool items/s", "p50 ms", "p99 ms", "avg batch", "speedup vs 1",
                        "items per device", title="scaling (same run)")
        for r in report["rows"]:
            for s in r.get("scaling", []):
                scaling.add_row(str(r["batch_size"]), str(s["devices"]), f"{s['items_s']:,.0f}",
                                f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['avg_batch']:.1f}",
                                f"{s['speedup']:.2f}x",
                                " ".join(f"{d}={n}" for d, n in s["per_device"].items()))
        console.print(scaling)
