"""Closed-loop HTTP load generator for ``gpufleet serve`` (``gpufleet load URL ...``).

``run_load``: ``concurrency`` clients, each sending its next request when the previous one answered, for
``warmup`` seconds (not counted) then ``duration`` seconds; reports req/s, latency percentiles and errors
by status. ``run_burst``: N requests at once (the seed's ``test_batching.py --burst N``): total duration,
successes, throughput and the server's ``/stats`` batch statistics. One aiohttp session, connector
limit = concurrency.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import orjson

__all__ = ["Payload", "format_report", "make_payloads", "run_burst", "run_load"]


class Payload:
    """One request body and its content type."""

    __slots__ = ("body", "content_type")

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body, self.content_type = body, content_type


def _jpeg(angle: int, seed: int) -> bytes:
    from gpufleet.tools.synth import text_image

    buf = io.BytesIO()
    text_image(size=(224, 224), angle=angle, seed=seed).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_payloads(kind: str, variants: int = 8) -> list[Payload]:
    """``orientation``/``jpeg224``: ``{"image": <base64 224x224 JPEG>}`` of rendered rotated text (cycled
    variants); ``file:PATH``: the file's bytes (JSON if it ends in .json, else raw octet-stream)."""
    if kind in ("orientation", "jpeg224"):
        out = []
        for i in range(variants):
            b64 = base64.b64encode(_jpeg((0, 90, 180, 270)[i % 4], seed=i)).decode()
            out.append(Payload(orjson.dumps({"image": b64}), "application/json"))
        return out
    if kind.startswith("file:"):
        path = Path(kind[5:])
        if not path.is_file():
            raise ValueError(f"payload file not found: {path}")
        data = path.read_bytes()
        ctype = {".json": "application/json", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                 ".png": "image/png"}.get(path.suffix.lower(), "application/octet-stream")
        return [Payload(data, ctype)]
    raise ValueError(f"unknown payload {kind!r}; use orientation, jpeg224 or file:PATH")


def _endpoint(url: str) -> tuple[str, str]:
    """The predict URL (``/predict`` added to a bare server URL) and the server's ``/stats`` URL."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/") or ""
    predict = urlunsplit(parts._replace(path=path if path else "/predict"))
    stats = urlunsplit(parts._replace(path="/stats", query=""))
    return predict, stats


def _percentiles(lat: list[float]) -> dict[str, float]:
    if not lat:
        return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "max_ms": 0.0}
    a = np.asarray(lat) * 1e3
    p50, p90, p99 = np.percentile(a, (50, 90, 99))
    return {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3), "p99_ms": round(float(p99), 3),
            "mean_ms": round(float(a.mean()), 3), "max_ms": round(float(a.max()), 3)}


def _headers(payload: Payload, token: str | None) -> dict[str, str]:
    h = {"Content-Type": payload.content_type}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return h


async def _send(session: Any, url: str, payload: Payload, token: str | None) -> int:
    import aiohttp

    try:
        async with session.post(url, data=payload.body, headers=_headers(payload, token)) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return -1 if not isinstance(exc, asyncio.TimeoutError) else -2


async def _load(url: str, concurrency: int, duration: float, warmup: float, payloads: list[Payload],
                token: str | None, timeout_s: float) -> dict[str, Any]:
    import aiohttp

    predict, _ = _endpoint(url)
    lat: list[float] = []
    statuses: Counter[int] = Counter()
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + duration
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def client(k: int) -> None:
            i = k
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                status = await _send(session, predict, payloads[i % len(payloads)], token)
                i += concurrency
                t1 = time.perf_counter()
                if t0 >= t_measure:
                    statuses[status] += 1
                    if status == 200:
                        lat.append(t1 - t0)

        cpu: list[float] = []

        async def cpu_window() -> None:  # this process's CPU time over the measured window
            await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
            cpu.append(time.process_time())
            await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
            cpu.append(time.process_time())

        await asyncio.gather(cpu_window(), *(client(k) for k in range(concurrency)))
    elapsed = max(1e-9, min(time.perf_counter(), t_end) - t_measure) if duration > 0 else 1e-9
    cpu_s = cpu[1] - cpu[0] if len(cpu) == 2 else 0.0
    return {"lat": lat, "statuses": dict(statuses), "elapsed": elapsed, "cpu_s": cpu_s}


def _report(url: str, concurrency: int, warmup: float, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One closed-loop report from the raw results of one or more client processes."""
    predict, _ = _endpoint(url)
    lat = [t for p in parts for t in p["lat"]]
    statuses: Counter[int] = Counter()
    for p in parts:
        statuses.update({int(k): v for k, v in p["statuses"].items()})
    elapsed = max(p["elapsed"] for p in parts)
    ok = statuses.get(200, 0)
    requests = sum(statuses.values())
    cpu = [p.get("cpu_s", 0.0) for p in parts]
    return {"mode": "closed-loop", "url": predict, "concurrency": concurrency, "processes": len(parts),
            "duration_s": round(elapsed, 3), "warmup_s": warmup, "requests": requests, "ok": ok,
            "rps": round(ok / elapsed, 2), "latency": _percentiles(lat),
            "errors": {str(k): v for k, v in sorted(statuses.items()) if k != 200},
            # The client's own CPU over the measured window: a client process near 1.0 core is the limit.
            "client_cpu": {"cores": round(sum(cpu) / elapsed, 2),
                           "max_process_cores": round(max(cpu) / elapsed, 2) if cpu else 0.0,
                           "ms_per_request": round(sum(cpu) / requests * 1e3, 4) if requests else 0.0}}


def _run(coro: Any) -> Any:
    """Run ``coro`` on uvloop where installed (a quarter less client CPU per request, measured on CPU)."""
    from gpufleet.engine.remote import new_event_loop

    # What is alive now (torch, imported with gpufleet) leaves the collector's view: a full collection took
    # ~60 ms here, which a closed-loop client would have counted in its requests' latency.
    gc.collect()
    gc.freeze()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)


def _load_in_process(args: tuple) -> dict[str, Any]:
    url, concurrency, duration, warmup, payload, token, timeout_s, offset = args
    payloads = make_payloads(payload)
    payloads = payloads[offset % len(payloads):] + payloads[: offset % len(payloads)]
    return _run(_load(url, concurrency, duration, warmup, payloads, token, timeout_s))


async def _burst(url: str, n: int, payloads: list[Payload], token: str | None, timeout_s: float) -> dict[str, Any]:
    import aiohttp

    predict, stats_url = _endpoint(url)
    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        async def one(i: int) -> tuple[int, float]:
            t0 = time.perf_counter()
            status = await _send(session, predict, payloads[i % len(payloads)], token)
            return status, time.perf_counter() - t0

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(n)))
        total = time.perf_counter() - t0
        stats: dict[str, Any] = {}
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with session.get(stats_url, headers=headers) as resp:
                if resp.status == 200:
                    s = orjson.loads(await resp.read())
                    stats = {k: s.get(k) for k in ("num_gpus", "total_batches", "avg_batch_size", "per_gpu_stats")}
        except aiohttp.ClientError:
            pass
    statuses = Counter(s for s, _ in results)
    ok = statuses.get(200, 0)
    return {"mode": "burst", "url": predict, "burst": n, "total_duration_s": round(total, 4), "successful": ok,
            "throughput_rps": round(ok / total, 2) if total > 0 else 0.0,
            "latency": _percentiles([t for s, t in results if s == 200]),
            "errors": {str(k): v for k, v in sorted(statuses.items()) if k != 200}, "batch_statistics": stats}


def run_load(url: str, *, concurrency: int = 256, duration: float = 30.0, warmup: float = 5.0,
             payload: str = "orientation", token: str | None = None, timeout_s: float = 60.0,
             processes: int = 1) -> dict[str, Any]:
    """Closed-loop load against ``url`` (a server URL or its ``/predict``); returns the report dict.

    ``processes > 1`` splits the clients over that many processes, so one client core does not cap the
    measurement of a fast server; latencies are merged before the percentiles are taken.
    """
    if processes <= 1:
        raw = _run(_load(url, concurrency, duration, warmup, make_payloads(payload), token, timeout_s))
        return _report(url, concurrency, warmup, [raw])
    import multiprocessing as mp

    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    jobs = [(url, c, duration, warmup, payload, token, timeout_s, i) for i, c in enumerate(shares) if c > 0]
    with mp.get_context("spawn").Pool(len(jobs)) as workers:
        parts = workers.map(_load_in_process, jobs)
    return _report(url, concurrency, warmup, parts)


def run_burst(url: str, n: int, *, payload: str = "orientation", token: str | None = None,
              timeout_s: float = 300.0) -> dict[str, Any]:
    """Send ``n`` requests at once; returns duration, successes, throughput and the server's batch stats."""
    return _run(_burst(url, n, make_payloads(payload), token, timeout_s))


def format_report(report: dict[str, Any]) -> str:
    """A short human-readable report, in the seed's ``test_batching.py`` style for bursts."""
    lat = report["latency"]
    errors = ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "none"
    if report["mode"] == "burst":
        lines = [f"Total Duration: {report['total_duration_s']:.2f}s",
                 f"Successful: {report['successful']}/{report['burst']}",
                 f"Throughput: {report['throughput_rps']:.2f} requests/second",
                 f"Latency: p50 {lat['p50_ms']:.1f} ms  p90 {lat['p90_ms']:.1f} ms  p99 {lat['p99_ms']:.1f} ms",
                 f"Errors: {errors}", "", "Batch Statistics:"]
        s = report["batch_statistics"]
        for key in ("num_gpus", "total_batches", "avg_batch_size"):
            lines.append(f"  {key}: {s.get(key)}")
        for g in s.get("per_gpu_stats") or []:
            lines.append(f"  gpu {g.get('gpu_id')} ({g.get('device')}): requests {g.get('total_requests')}, "
                         f"batches {g.get('total_batches')}, avg batch {g.get('avg_batch_size')}")
        return "\n".join(lines)
    return "\n".join([
        f"{report['url']}  concurrency {report['concurrency']} ({report.get('processes', 1)} client process(es))  "
        f"measured {report['duration_s']:.1f}s "
        f"(warm-up {report['warmup_s']}s)",
        f"Requests: {report['requests']}  OK: {report['ok']}  Throughput: {report['rps']:.1f} req/s",
        f"Latency: p50 {lat['p50_ms']:.1f} ms  p90 {lat['p90_ms']:.1f} ms  p99 {lat['p99_ms']:.1f} ms  "
        f"max {lat['max_ms']:.1f} ms",
        f"Errors: {errors}",
        *([f"Client CPU: {c['cores']:.2f} cores ({c['max_process_cores']:.2f} in the busiest client process), "
           f"{c['ms_per_request']:.3f} ms per request"] if (c := report.get("client_cpu")) else []),
    ])
