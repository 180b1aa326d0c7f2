"""Closed-loop load generator for ``gpufleet serve`` over HTTP or KServe v2 gRPC (``gpufleet load URL ...``).

``run_load``: ``concurrency`` clients, each sending its next request when the previous one answered, for
``warmup`` seconds (not counted) then ``duration`` seconds; reports req/s, latency percentiles and errors
by status. ``run_burst``: N requests at once (the seed's ``test_batching.py --burst N``): total duration,
successes, throughput and the server's ``/stats`` batch statistics. HTTP: one aiohttp session, connector
limit = concurrency; gRPC (``grpc://host:port``, closed loop only): one ``gpufleet.AsyncClient`` channel.

Failures are reported, not hidden: a report counts errors by kind (HTTP status, ``connection``, ``timeout``),
keeps the first few distinct error bodies (``error_samples``) and its ``error_rate``; the CLI exits 1 above
``--max-error-rate``. A server that cannot be reached at all raises :class:`LoadError` before the run
("cannot connect to 127.0.0.1:9: connection refused"). ``progress`` prints one live line a second (req/s,
errors, p99 so far) from a timer, so the clients' loop does no extra work per request.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import gc
import io
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import orjson

__all__ = ["LoadError", "Payload", "Progress", "describe_error", "format_report", "make_payloads", "run_burst",
           "run_load"]

CONNECTION, TIMEOUT = -1, -2  # statuses of requests that got no HTTP answer
MAX_SAMPLES = 5  # distinct error bodies kept per report
SAMPLE_CHARS = 300


_Send = Callable[["Payload", "_Errors"], Awaitable[int]]


class LoadError(Exception):
    """The load cannot run at all (the server cannot be reached); the message is one readable line."""


class Payload:
    """One request: its HTTP body and content type, and ``raw``, the item itself for protocols that carry tensors
    (gRPC: the JPEG, not the JSON that wraps it in base64 for ``/predict``)."""

    __slots__ = ("body", "content_type", "raw")

    def __init__(self, body: bytes, content_type: str, raw: bytes | None = None) -> None:
        self.body, self.content_type = body, content_type
        self.raw = body if raw is None else raw


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
            jpeg = _jpeg((0, 90, 180, 270)[i % 4], seed=i)
            out.append(Payload(orjson.dumps({"image": base64.b64encode(jpeg).decode()}), "application/json", jpeg))
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
    if url.startswith("grpc://"):
        return url, ""
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


def describe_error(exc: BaseException, url: str) -> str:
    """A failed request's cause in a user's words: ``cannot connect to 127.0.0.1:9: connection refused``."""
    import aiohttp

    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    if isinstance(exc, asyncio.TimeoutError):
        return f"timed out waiting for {where}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        code = getattr(os_error, "errno", None)
        if code == errno.ECONNREFUSED:
            why = "connection refused"
        elif isinstance(exc, aiohttp.ClientConnectorDNSError):
            why = "unknown host"
        else:
            why = (getattr(os_error, "strerror", None) or str(os_error) or type(os_error).__name__).lower()
        return f"cannot connect to {where}: {why}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{where} closed the connection without an answer"
    return f"{where}: {type(exc).__name__}: {exc}"


class _Errors:
    """Error samples of one client process: the first few distinct ``status: body`` lines."""

    __slots__ = ("samples",)

    def __init__(self) -> None:
        self.samples: list[str] = []

    def add(self, line: str) -> None:
        if len(self.samples) < MAX_SAMPLES and line not in self.samples:
            self.samples.append(line)


async def _send(session: Any, url: str, payload: Payload, token: str | None, errors: _Errors) -> int:
    import aiohttp

    try:
        async with session.post(url, data=payload.body, headers=_headers(payload, token)) as resp:
            body = await resp.read()
            if resp.status != 200 and len(errors.samples) < MAX_SAMPLES:
                text = body[:SAMPLE_CHARS].decode("utf-8", "replace").strip()
                errors.add(f"{resp.status}: {text}" if text else f"{resp.status} (empty body)")
            return resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        if len(errors.samples) < MAX_SAMPLES:
            errors.add(describe_error(exc, url))
        return TIMEOUT if isinstance(exc, asyncio.TimeoutError) else CONNECTION


async def _reachable(send: _Send, payload: Payload) -> None:
    """One request before the run: a server that cannot be reached is an error now, not 30 s of -1s."""
    errors = _Errors()
    if await send(payload, errors) == CONNECTION:
        raise LoadError(errors.samples[0] if errors.samples else "cannot connect to the server")


def _label(status: int) -> str:
    return {CONNECTION: "connection", TIMEOUT: "timeout"}.get(status, str(status))


class Progress:
    """The live line: ``12.0s  4,210 req/s  errors 0  p99 8.1 ms``, rewritten in place on a TTY."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = False

    def show(self, phase: str, elapsed: float, rps: float, errors: int, p99_ms: float | None) -> None:
        p99 = f"{p99_ms:.1f} ms" if p99_ms is not None else "-"
        line = f"{phase} {elapsed:5.1f}s  {rps:,.0f} req/s  errors {errors:,}  p99 {p99}"
        self.stream.write(f"\r\x1b[2K{line}" if self.tty else line + "\n")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()


@asynccontextmanager
async def _http_sender(url: str, concurrency: int, token: str | None, timeout_s: float) -> AsyncIterator[_Send]:
    """``send(payload, errors) -> status`` over one aiohttp session (connector limit = concurrency).

    Raw aiohttp rather than ``gpufleet.AsyncClient`` (httpx): measured on CPU against the same server (the
    ``Fast`` test model, c=32, 2 shared cores) aiohttp spent 0.21 ms of client CPU per request (~2,900 req/s)
    and the httpx client 4.3 ms (~230 req/s); the client would measure itself, not the server."""
    import aiohttp

    predict, _ = _endpoint(url)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        async def send(payload: Payload, errors: _Errors) -> int:
            return await _send(session, predict, payload, token, errors)

        yield send


@asynccontextmanager
async def _grpc_sender(url: str, token: str | None, timeout_s: float, model: str | None) -> AsyncIterator[_Send]:
    """``send(payload, errors) -> status`` over KServe v2 gRPC through ``gpufleet.AsyncClient`` (no retries:
    the load counts each refusal). Each payload is one ``BYTES`` item (``Payload.raw``: for ``jpeg224`` the
    JPEG); statuses are the HTTP statuses the gRPC codes stand for (RESOURCE_EXHAUSTED 429, UNAVAILABLE 503,
    DEADLINE_EXCEEDED 504 ...)."""
    from gpufleet.client import AsyncClient, Retry
    from gpufleet.errors import GpufleetError

    if not model:
        raise ValueError("gpufleet load over gRPC needs --model NAME (the served model's name)")
    client = AsyncClient(url, protocol="grpc", token=token, timeout_s=timeout_s, retry=Retry(attempts=1),
                         model=model)
    inputs: dict[int, dict[str, np.ndarray]] = {}

    async def send(payload: Payload, errors: _Errors) -> int:
        x = inputs.get(id(payload))
        if x is None:
            # one item of a batched BYTES input, [1, 1] as KServe v2 and Triton's batching models expect it
            x = inputs[id(payload)] = {"input": np.array([[payload.raw]], dtype=object)}
        try:
            await client.infer(x)
            return 200
        except GpufleetError as exc:
            code = getattr(exc, "code", None)
            status = getattr(exc, "status", None)
            if status is None or (code == "UNAVAILABLE" and "connect" in str(exc).lower()):
                status = CONNECTION
            if len(errors.samples) < MAX_SAMPLES:
                errors.add(f"{code or status}: {str(exc)[:SAMPLE_CHARS]}")
            return int(status)

    try:
        yield send
    finally:
        await client.aclose()


def _sender(url: str, concurrency: int, token: str | None, timeout_s: float, model: str | None) -> Any:
    if url.startswith("grpc://"):
        return _grpc_sender(url, token, timeout_s, model)
    return _http_sender(url, concurrency, token, timeout_s)


async def _load(url: str, concurrency: int, duration: float, warmup: float, payloads: list[Payload],
                token: str | None, timeout_s: float, tick: Callable[[dict[str, Any]], None] | None = None,
                check: bool = True, model: str | None = None, interruptible: bool = False) -> dict[str, Any]:
    """One process's closed loop. ``interruptible``: Ctrl-C (SIGINT, on the main thread) ends the run at once
    and what was measured until then is returned, marked ``interrupted``."""
    lat: list[float] = []
    statuses: Counter[int] = Counter()
    errors = _Errors()
    interrupted = False
    async with _sender(url, concurrency, token, timeout_s, model) as send:
        if check:
            await _reachable(send, payloads[0])
        t_start = time.perf_counter()
        t_measure = t_start + warmup
        end = [t_measure + duration]  # a Ctrl-C moves it to that moment
        done = [0, 0]  # requests answered and failed so far, warm-up included (for the progress line)

        async def client(k: int) -> None:
            i = k
            while True:
                t0 = time.perf_counter()
                if t0 >= end[0]:
                    return
                status = await send(payloads[i % len(payloads)], errors)
                i += concurrency
                t1 = time.perf_counter()
                done[0] += 1
                if status != 200:
                    done[1] += 1
                if t0 >= t_measure:
                    statuses[status] += 1
                    if status == 200:
                        lat.append(t1 - t0)

        cpu: list[float] = []

        async def cpu_window() -> None:  # this process's CPU time over the measured window
            await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
            cpu.append(time.process_time())
            await asyncio.sleep(max(0.0, end[0] - time.perf_counter()))
            cpu.append(time.process_time())

        async def ticker() -> None:  # once a second, never per request: the clients' loop stays as it was
            assert tick is not None
            last_t, last_n = time.perf_counter(), 0
            while (now := time.perf_counter()) < end[0]:
                warm = now < t_measure  # a tick lands on the end of the warm-up and on the end of the run
                await asyncio.sleep(max(0.01, min(now + 1.0, t_measure if warm else end[0]) - now))
                now = time.perf_counter()
                n = done[0]
                tick({"phase": "warm-up" if warm else "measure", "elapsed": now - (t_start if warm else t_measure),
                      "rps": (n - last_n) / max(1e-9, now - last_t), "done": n, "errors": done[1],
                      "p99_ms": float(np.percentile(lat, 99)) * 1e3 if lat else None})
                last_t, last_n = now, n

        tasks = [asyncio.ensure_future(c) for c in (cpu_window(), *(client(k) for k in range(concurrency)))]
        if tick is not None:
            tasks.append(asyncio.ensure_future(ticker()))

        def stop() -> None:  # Ctrl-C: the run ends now; requests in flight are dropped, not counted
            nonlocal interrupted
            if not interrupted:
                interrupted = True
                end[0] = min(end[0], time.perf_counter())
                for t in tasks:
                    t.cancel()

        loop = asyncio.get_running_loop()
        watching = False
        if interruptible and threading.current_thread() is threading.main_thread():
            try:
                loop.add_signal_handler(signal.SIGINT, stop)
                watching = True
            except (NotImplementedError, RuntimeError, ValueError):  # no signals on this loop or thread
                pass
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            if watching:
                loop.remove_signal_handler(signal.SIGINT)  # which puts back Python's default handler
                if _IN_CLIENT:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
        failed = next((t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None), None)
        if failed is not None:  # a client broke: the run ends with its error
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks)
            raise failed.exception()  # type: ignore[misc]
    if len(cpu) == 1:  # interrupted while measuring
        cpu.append(time.process_time())
    elapsed = max(1e-9, min(time.perf_counter(), end[0]) - t_measure) if duration > 0 else 1e-9
    cpu_s = cpu[1] - cpu[0] if len(cpu) == 2 else 0.0
    return {"lat": lat, "statuses": dict(statuses), "elapsed": elapsed, "cpu_s": cpu_s, "samples": errors.samples,
            "interrupted": interrupted}


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
    samples = _Errors()
    for p in parts:
        for line in p.get("samples", []):
            samples.add(line)
    return {"mode": "closed-loop", "url": predict, "concurrency": concurrency, "processes": len(parts),
            "interrupted": any(p.get("interrupted") for p in parts),
            "duration_s": round(elapsed, 3), "warmup_s": warmup, "requests": requests, "ok": ok,
            "rps": round(ok / elapsed, 2), "latency": _percentiles(lat),
            "errors": {_label(k): v for k, v in sorted(statuses.items()) if k != 200},
            "error_rate": round((requests - ok) / requests, 6) if requests else 1.0,
            "error_samples": samples.samples,
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


_SHARED: Any = None  # in a client process: its progress slots (see _client_process)
_IN_CLIENT = False  # this is a client process of run_load(processes > 1)


def _client_process(shared: Any) -> None:
    """A client process starts here: its progress slots, and SIGINT ignored but while it measures (a Ctrl-C then
    ends the run; one that comes later, e.g. the parent's copy of the terminal's, must not kill the process)."""
    global _SHARED, _IN_CLIENT
    _SHARED, _IN_CLIENT = shared, True
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _load_in_process(args: tuple) -> dict[str, Any]:
    url, concurrency, duration, warmup, payload, token, timeout_s, offset, model, interruptible = args
    payloads = make_payloads(payload)
    payloads = payloads[offset % len(payloads):] + payloads[: offset % len(payloads)]
    tick = None
    if _SHARED is not None:
        shared = _SHARED

        def tick(t: dict[str, Any]) -> None:  # four slots per process: answered, failed, p99, measuring
            shared[4 * offset: 4 * offset + 4] = [t["done"], t["errors"], t["p99_ms"] or 0.0,
                                                  1.0 if t["phase"] == "measure" else 0.0]
    try:
        return _run(_load(url, concurrency, duration, warmup, payloads, token, timeout_s, tick, model=model,
                          interruptible=interruptible))
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # whatever the run's event loop left, ignored again


async def _burst(url: str, n: int, payloads: list[Payload], token: str | None, timeout_s: float) -> dict[str, Any]:
    import aiohttp

    predict, stats_url = _endpoint(url)
    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        await _reachable(lambda p, e: _send(session, predict, p, token, e), payloads[0])
        errors = _Errors()

        async def one(i: int) -> tuple[int, float]:
            t0 = time.perf_counter()
            status = await _send(session, predict, payloads[i % len(payloads)], token, errors)
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
            "errors": {_label(k): v for k, v in sorted(statuses.items()) if k != 200},
            "error_rate": round((n - ok) / n, 6), "error_samples": errors.samples, "batch_statistics": stats}


def run_load(url: str, *, concurrency: int = 256, duration: float = 30.0, warmup: float = 5.0,
             payload: str = "orientation", token: str | None = None, timeout_s: float = 60.0,
             processes: int = 1, progress: Progress | None = None, model: str | None = None,
             interruptible: bool = False) -> dict[str, Any]:
    """Closed-loop load against ``url`` (a server URL or its ``/predict``; or ``grpc://host:port``: KServe v2
    ``ModelInfer`` of ``model`` through ``gpufleet.AsyncClient``); returns the report dict.

    ``processes > 1`` splits the clients over that many processes, so one client core does not cap the
    measurement of a fast server; latencies are merged before the percentiles are taken. ``progress`` gets
    one line a second. ``interruptible``: Ctrl-C ends the run early and the report covers what was measured
    until then (``"interrupted": true``); called from the main thread (``gpufleet load`` does). Raises
    :class:`LoadError` when the server cannot be reached at all.
    """
    if processes <= 1:
        def tick(t: dict[str, Any]) -> None:
            assert progress is not None
            progress.show(t["phase"], t["elapsed"], t["rps"], t["errors"], t["p99_ms"])

        try:
            raw = _run(_load(url, concurrency, duration, warmup, make_payloads(payload), token, timeout_s,
                             tick if progress is not None else None, model=model, interruptible=interruptible))
        finally:
            if progress is not None:
                progress.close()
        return _report(url, concurrency, warmup, [raw])
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    jobs = [(url, c, duration, warmup, payload, token, timeout_s, i, model, interruptible)
            for i, c in enumerate(shares) if c > 0]
    shared = ctx.Array("d", 4 * len(jobs), lock=False) if progress is not None else None
    stop = threading.Event()

    def watch() -> None:  # the parent sums its client processes' slots once a second
        assert progress is not None and shared is not None
        t0 = last_t = time.perf_counter()
        last_n = 0.0
        while not stop.wait(1.0):
            vals = list(shared)
            n, errs = sum(vals[0::4]), sum(vals[1::4])
            now = time.perf_counter()
            if n:
                measuring = all(vals[3::4])
                progress.show("measure" if measuring else "warm-up", now - t0, (n - last_n) / (now - last_t),
                              int(errs), max(vals[2::4]) or None)
            last_t, last_n = now, n

    watcher = threading.Thread(target=watch, daemon=True) if progress is not None else None
    forwarding = interruptible and threading.current_thread() is threading.main_thread()
    old_handler: Any = None
    try:
        with ctx.Pool(len(jobs), initializer=_client_process, initargs=(shared,)) as workers:
            if forwarding:  # the client processes stop and report; a second Ctrl-C abandons them
                old_handler = signal.signal(signal.SIGINT, _forward_sigint())
            if watcher is not None:
                watcher.start()
            parts = workers.map(_load_in_process, jobs)
    finally:
        if forwarding:
            signal.signal(signal.SIGINT, old_handler if old_handler is not None else signal.default_int_handler)
        stop.set()
        if watcher is not None:
            watcher.join()
        if progress is not None:
            progress.close()
    return _report(url, concurrency, warmup, parts)


def _forward_sigint() -> Callable[[int, Any], None]:
    """The parent's SIGINT handler while its client processes run: the first Ctrl-C is passed on to them (a
    terminal sends them their own too; a ``kill -INT`` of the parent does not), they stop and report; a second
    one raises ``KeyboardInterrupt``."""
    import multiprocessing as mp

    seen = [False]

    def handler(signum: int, frame: Any) -> None:
        if seen[0]:
            raise KeyboardInterrupt
        seen[0] = True
        for child in mp.active_children():
            try:
                os.kill(child.pid, signal.SIGINT)  # type: ignore[arg-type]
            except (OSError, TypeError):
                pass

    return handler


def run_burst(url: str, n: int, *, payload: str = "orientation", token: str | None = None,
              timeout_s: float = 300.0) -> dict[str, Any]:
    """Send ``n`` requests at once; returns duration, successes, throughput and the server's batch stats."""
    return _run(_burst(url, n, make_payloads(payload), token, timeout_s))


def format_report(report: dict[str, Any]) -> str:
    """A short human-readable report, in the seed's ``test_batching.py`` style for bursts."""
    lat = report["latency"]
    errors = ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "none"
    samples = [f"  {line}" for line in report.get("error_samples", [])]
    if samples:
        samples.insert(0, "Error samples (first distinct):")
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
        return "\n".join(lines + samples)
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
        *samples,
    ])
