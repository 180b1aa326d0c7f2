"""``gpufleet tune``: the fastest serving configuration whose p99 latency meets a target, on this machine.

Each trial serves the model with one configuration (a real ``gpufleet serve`` on 127.0.0.1, or an in-process
``Pool`` with ``http=False``) and loads it in a closed loop at rising concurrency. Trials that differ only in
batching reuse one warm server (``POST /admin/batching``, :meth:`gpufleet.Pool.configure`), so the batch and
wait search pays one start-up; a trial's score is the highest
throughput among the concurrencies whose p99 met the target with no failed request. Concurrency stops rising at
the first miss (early stop) or when throughput stops rising. The search goes coarse to fine, each stage keeping
the best so far:

1. max batch size, doubling until throughput stops rising (by ``gain``) or the server fails to start (memory);
2. max wait around the default;
3. workers per device (1, 2, ...), then the other backends at each of those counts (``process``: one process
   per worker);
4. HTTP front-end processes: the search starts with a quarter of the cores (at most 8) so that HTTP does not
   cap the batch search, then tries half, double and one.

A trial that would not fit in what is left of ``budget_s`` is not run and is listed under ``not_tried``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gpufleet.errors import ConfigError, GpufleetError

__all__ = ["Candidate", "Measurement", "TuneResult", "TuneSpec", "Trial", "tune"]

GAIN = 1.03  # a larger setting must raise throughput by 3% to count as better


@dataclass(frozen=True)
class Candidate:
    """One serving configuration: the ``gpufleet serve`` options the search varies."""

    max_batch_size: int
    max_wait_ms: float
    workers_per_device: int = 1
    backend: str = "thread"
    http_workers: int = 1

    def label(self) -> str:
        return (f"batch {self.max_batch_size} · wait {self.max_wait_ms:g} ms · {self.workers_per_device}×"
                f"{self.backend} · {self.http_workers} http")

    def serve_flags(self) -> list[str]:
        return ["--max-batch-size", str(self.max_batch_size), "--max-wait-ms", f"{self.max_wait_ms:g}",
                "--workers-per-device", str(self.workers_per_device), "--backend", self.backend,
                "--http-workers", str(self.http_workers)]


@dataclass(frozen=True)
class Measurement:
    """One concurrency level of one trial."""

    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int
    gpu_util: float | None = None
    gpu_mem_gb: float | None = None
    meets: bool = False


@dataclass
class Trial:
    """One candidate's measurements; ``best`` is the fastest level that met the target (None: none did)."""

    candidate: Candidate
    measurements: list[Measurement] = field(default_factory=list)
    startup_s: float = 0.0
    seconds: float = 0.0
    error: str | None = None

    @property
    def best(self) -> Measurement | None:
        ok = [m for m in self.measurements if m.meets]
        return max(ok, key=lambda m: m.rps) if ok else None

    @property
    def score(self) -> float:
        """The throughput that met the target (0: none did)."""
        return self.best.rps if self.best is not None else 0.0

    @property
    def peak(self) -> float:
        """The highest throughput measured, target met or not: how much a setting can carry."""
        return max((m.rps for m in self.measurements), default=0.0)


@dataclass(frozen=True)
class TuneSpec:
    """What to tune and how long: the model, the p99 target, the load and the search's bounds."""

    model: str
    slo_p99_ms: float
    payload: str = "jpeg224"
    devices: str | None = None
    cpu_devices: int | None = None
    budget_s: float = 300.0
    concurrency: tuple[int, ...] = (8, 32, 128, 256)
    duration_s: float = 3.0
    warmup_s: float = 1.0
    http: bool = True
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    waits_ms: tuple[float, ...] = (2.0, 0.5, 5.0, 10.0)
    max_workers_per_device: int = 2
    backends: tuple[str, ...] = ("thread", "process")
    max_http_workers: int | None = None
    load_processes: int | None = None
    extra_flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.slo_p99_ms <= 0:
            raise ConfigError(f"the p99 target must be > 0 ms, got {self.slo_p99_ms}")
        if self.budget_s <= 0:
            raise ConfigError(f"the budget must be > 0 s, got {self.budget_s}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError(f"concurrency levels must be >= 1, got {list(self.concurrency)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"batch sizes must be >= 1, got {list(self.batch_sizes)}")
        if not self.backends:
            raise ConfigError("at least one backend must be tried")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise ConfigError("the measured seconds must be > 0 and the warm-up >= 0")


@dataclass
class TuneResult:
    """The search's outcome: the chosen trial (None when no configuration met the target), every trial, what
    was not tried and why, and the machine it ran on."""

    spec: TuneSpec
    best: Trial | None
    trials: list[Trial]
    not_tried: list[str]
    machine: dict[str, Any]
    elapsed_s: float
    interrupted: bool = False  # Ctrl-C ended the search: the result holds the trials finished until then

    def serve_options(self) -> dict[str, Any]:
        """The ``[serve]`` table of the written file: the chosen configuration plus the devices tuned on."""
        if self.best is None:
            return {}
        c = self.best.candidate
        out: dict[str, Any] = {"model": self.spec.model, "max_batch_size": c.max_batch_size,
                               "max_wait_ms": c.max_wait_ms, "workers_per_device": c.workers_per_device,
                               "backend": c.backend}
        if self.spec.http:
            out["http_workers"] = c.http_workers
        if self.spec.devices is not None:
            out["gpus"] = self.spec.devices
        if self.spec.cpu_devices is not None:
            out["cpu_devices"] = self.spec.cpu_devices
        return out

    def as_dict(self) -> dict[str, Any]:
        def trial(t: Trial) -> dict[str, Any]:
            best = t.best
            return {"config": asdict(t.candidate), "score_rps": round(t.score, 1), "peak_rps": round(t.peak, 1),
                    "best": asdict(best) if best else None, "measurements": [asdict(m) for m in t.measurements],
                    "startup_s": round(t.startup_s, 2), "seconds": round(t.seconds, 2), "error": t.error}

        return {"model": self.spec.model, "slo_p99_ms": self.spec.slo_p99_ms, "payload": self.spec.payload,
                "http": self.spec.http, "budget_s": self.spec.budget_s, "elapsed_s": round(self.elapsed_s, 1),
                "machine": self.machine, "chosen": trial(self.best) if self.best else None,
                "serve": self.serve_options(), "trials": [trial(t) for t in self.trials],
                "not_tried": self.not_tried, "interrupted": self.interrupted}


# ---------------------------------------------------------------------------------------------------- measuring


class _GpuSampler:
    """Mean GPU utilisation and peak memory of the GPUs NVML sees, sampled in a thread while a level runs."""

    def __init__(self, period_s: float = 0.25) -> None:
        from gpufleet.devices.nvml import device_count

        self.indices = list(range(device_count() or 0))
        self.period_s, self.util, self.mem = period_s, [], []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _GpuSampler:
        if self.indices:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        from gpufleet.devices.nvml import gpu_utilization

        while not self._stop.wait(self.period_s):
            readings = [gpu_utilization(i) or {} for i in self.indices]
            utils = [r["util_gpu"] for r in readings if r.get("util_gpu") is not None]
            mems = [r["memory_used_gb"] for r in readings if r.get("memory_used_gb") is not None]
            if utils:
                self.util.append(sum(utils) / len(utils))
            if mems:
                self.mem.append(sum(mems))

    def readings(self) -> tuple[float | None, float | None]:
        util = round(sum(self.util) / len(self.util), 1) if self.util else None
        return util, (round(max(self.mem), 2) if self.mem else None)


def _levels(spec: TuneSpec, measure: Callable[[int], tuple[float, float, float, int]],
            on_measure: Callable[[Measurement], None]) -> Iterator[Measurement]:
    """Rising concurrency until p99 misses the target (that level is kept: it shows the capacity) or throughput
    stops rising."""
    previous = 0.0
    for c in sorted(set(spec.concurrency)):
        with _GpuSampler() as sampler:
            rps, p50, p99, failed = measure(c)
        util, mem = sampler.readings()
        m = Measurement(c, round(rps, 1), round(p50, 2), round(p99, 2), failed, util, mem,
                        meets=failed == 0 and p99 <= spec.slo_p99_ms and rps > 0)
        on_measure(m)
        yield m
        if not m.meets or rps < previous * 1.02:
            return
        previous = rps


def _load_processes(spec: TuneSpec, concurrency: int) -> int:
    if spec.load_processes is not None:
        return max(1, min(spec.load_processes, concurrency))
    cores = os.cpu_count() or 1
    return max(1, min(concurrency // 16, cores // 2, 12))


class _Host:
    """What serves the trials: one warm server (or in-process pool) reused by every trial that differs from the
    last only in batching (``max_batch_size``, ``max_wait_ms``: changed live), a new one when the workers, backend
    or front ends change. A new one is set up for the largest batch size the search may try, so that smaller
    ones need no restart; if that does not start (memory), for the trial's own size."""

    def __init__(self, spec: TuneSpec) -> None:
        self.spec = spec
        self.key: tuple[Any, ...] | None = None
        self.limit = 0  # the batch size the current host was set up for
        self.served: Any = None  # a ServedModel (http) or a Pool
        self.items: list[Any] | None = None

    def close(self) -> None:
        host, self.served, self.key = self.served, None, None
        if host is not None:
            host.close()

    def _start(self, cand: Candidate, max_batch_size: int) -> Any:
        spec = self.spec
        if spec.http:
            from gpufleet.tools.served import ServedModel

            flags = [*replace(cand, max_batch_size=max_batch_size).serve_flags(), "--max-queue", "65536",
                     "--log-level", "warning", *spec.extra_flags]
            if spec.devices is not None:
                flags += ["--gpus", spec.devices]
            if spec.cpu_devices is not None:
                flags += ["--cpu-devices", str(spec.cpu_devices)]
            return ServedModel(spec.model, flags).__enter__()
        from gpufleet.engine.pool import Pool
        from gpufleet.models.resolve import resolve_model

        return Pool(resolve_model(spec.model), devices=spec.devices, cpu_devices=spec.cpu_devices,
                    max_batch_size=max_batch_size, max_wait_ms=cand.max_wait_ms,
                    workers_per_device=cand.workers_per_device, backend=cand.backend, max_queue=65536)

    @staticmethod
    def _key(cand: Candidate) -> tuple[Any, ...]:
        """What a host is started with and cannot change live."""
        return cand.workers_per_device, cand.backend, cand.http_workers

    def reuses(self, cand: Candidate) -> bool:
        """``cand`` runs on the warm host (only its batching differs)."""
        return self.served is not None and self._key(cand) == self.key and cand.max_batch_size <= self.limit

    def prepare(self, cand: Candidate) -> float:
        """Serve ``cand``: reconfigure the warm host, or start a new one; the seconds a start took (0: reused)."""
        if self.reuses(cand):
            self.served.configure(max_batch_size=cand.max_batch_size, max_wait_ms=cand.max_wait_ms)
            return 0.0
        self.close()
        t0 = time.monotonic()
        largest = max(max(self.spec.batch_sizes), cand.max_batch_size)
        try:
            self.served, self.limit = self._start(cand, largest), largest
        except GpufleetError:
            if largest == cand.max_batch_size:
                raise
            self.served, self.limit = self._start(cand, cand.max_batch_size), cand.max_batch_size
        self.key = self._key(cand)
        if largest != cand.max_batch_size:
            self.served.configure(max_batch_size=cand.max_batch_size, max_wait_ms=cand.max_wait_ms)
        return time.monotonic() - t0

    def measure(self, c: int) -> tuple[float, float, float, int]:
        spec = self.spec
        if not spec.http:
            if self.items is None:
                self.items = _pool_items(spec.payload)
            return _closed_loop(self.served, self.items, c, spec.warmup_s, spec.duration_s)
        from gpufleet.tools.load import run_load

        rep = run_load(f"{self.served.url}/predict", concurrency=c, duration=spec.duration_s, warmup=spec.warmup_s,
                       payload=spec.payload, processes=_load_processes(spec, c),
                       timeout_s=max(10.0, spec.slo_p99_ms / 100))
        lat = rep["latency"]
        return rep["rps"], lat["p50_ms"], lat["p99_ms"], rep["requests"] - rep["ok"]

    def trial(self, cand: Candidate, on_measure: Callable[[Measurement], None]) -> Trial:
        trial = Trial(cand)
        t0 = time.monotonic()
        try:
            trial.startup_s = self.prepare(cand)
            trial.measurements = list(_levels(self.spec, self.measure, on_measure))
        except GpufleetError as exc:
            trial.error = str(exc)
            self.close()
        trial.seconds = time.monotonic() - t0
        return trial


def _closed_loop(pool: Any, items: list[Any], concurrency: int, warmup_s: float,
                 duration_s: float) -> tuple[float, float, float, int]:
    """``concurrency`` threads each submitting one item and waiting for it, for warm-up then the measured time."""
    lats: list[float] = []
    failed = [0]
    lock = threading.Lock()
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup_s, t_start + warmup_s + duration_s

    def client(k: int) -> None:
        i = k
        while True:
            t = time.perf_counter()
            if t >= t_end:
                return
            try:
                pool.submit(items[i % len(items)]).result()
                ok = True
            except Exception:  # noqa: BLE001 - a failed request is counted, not raised
                ok = False
            done = time.perf_counter()
            i += 1
            if t >= t_measure and done <= t_end:
                with lock:
                    if ok:
                        lats.append(done - t)
                    else:
                        failed[0] += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not lats:
        return 0.0, 0.0, 0.0, failed[0]
    lats.sort()
    pick = lambda q: lats[min(len(lats) - 1, int(q * len(lats)))] * 1e3  # noqa: E731
    return len(lats) / duration_s, pick(0.50), pick(0.99), failed[0]


def _pool_items(payload: str) -> list[Any]:
    """The payload's request bodies as the items a served model's ``predict`` would get."""
    import orjson

    from gpufleet.tools.load import make_payloads

    return [orjson.loads(p.body) if p.content_type == "application/json" else p.body for p in make_payloads(payload)]


# ---------------------------------------------------------------------------------------------------- searching


class _Search:
    """The staged search over one budget; ``run`` measures a candidate (served or pooled)."""

    def __init__(self, spec: TuneSpec, run: Callable[[Candidate], Trial], on_trial: Callable[[Trial], None],
                 reuses: Callable[[Candidate], bool] = lambda c: False) -> None:
        self.spec, self.run_trial, self.on_trial, self.reuses = spec, run, on_trial, reuses
        self.t0 = time.monotonic()
        self.trials: list[Trial] = []
        self.not_tried: list[str] = []
        self.seen: set[Candidate] = set()
        self.best: Trial | None = None

    def left_s(self) -> float:
        return self.spec.budget_s - (time.monotonic() - self.t0)

    def estimate_s(self, cand: Candidate) -> float:
        """A trial's expected cost: the mean measuring time so far, plus the mean start-up unless ``cand`` reuses
        the warm server; before any trial, a cold guess (start-up + every level)."""
        done = [t for t in self.trials if t.error is None]
        levels = len(self.spec.concurrency) * (self.spec.warmup_s + self.spec.duration_s)
        if done:
            levels = sum(t.seconds - t.startup_s for t in done) / len(done)
        starts = [t.startup_s for t in done if t.startup_s > 0]
        start = sum(starts) / len(starts) if starts else 5.0
        return levels + (0.0 if self.reuses(cand) else start)

    def try_(self, cand: Candidate) -> Trial | None:
        """Measure ``cand`` unless seen or over budget (then noted); keeps the best trial."""
        if cand in self.seen:
            return next(t for t in self.trials if t.candidate == cand)
        if self.trials and self.estimate_s(cand) > self.left_s():
            self.not_tried.append(f"{cand.label()}: over the budget ({self.left_s():.0f} s left, this trial "
                                  f"would take ~{self.estimate_s(cand):.0f} s)")
            return None
        self.seen.add(cand)
        trial = self.run_trial(cand)
        self.trials.append(trial)
        if trial.score > 0 and (self.best is None or trial.score > self.best.score):
            self.best = trial  # before the callback: a Ctrl-C during it still keeps this trial as the best
        self.on_trial(trial)
        return trial

    def better(self, trial: Trial | None, than: Trial | None) -> bool:
        return trial is not None and trial.score > 0 and (than is None or trial.score >= than.score * GAIN)

    def max_http_workers(self) -> int:
        return self.spec.max_http_workers or max(1, (os.cpu_count() or 1) // 2)

    def start_http_workers(self) -> int:
        """Front ends while the other settings are searched: as many as ``gpufleet serve`` starts on this machine
        (so HTTP does not cap the batch search and the serve defaults are among the candidates), refined last."""
        if not self.spec.http:
            return 1
        from gpufleet.devices.discovery import select
        from gpufleet.server.config import machine_defaults

        gpus = sum(d.kind == "cuda" for d in select(self.spec.devices, cpu_devices=self.spec.cpu_devices))
        return max(1, min(machine_defaults(gpus)["http_workers"], self.max_http_workers()))

    def batch_sizes(self) -> Candidate:
        """Doubling until throughput stops rising or the server does not start (memory)."""
        base = Candidate(self.spec.batch_sizes[0], self.spec.waits_ms[0], backend=self.spec.backends[0],
                         http_workers=self.start_http_workers())
        best: Trial | None = None
        sizes = sorted(set(self.spec.batch_sizes))
        for i, bs in enumerate(sizes):
            trial = self.try_(replace(base, max_batch_size=bs))
            if trial is None:
                self.not_tried += [f"batch {b}: over the budget" for b in sizes[i + 1:]]
                break
            if trial.error is not None:
                self.not_tried += [f"batch {b}: batch {bs} already failed to start" for b in sizes[i + 1:]]
                break
            rising = best is None or trial.peak >= best.peak * GAIN or self.better(trial, best)
            if best is None or self.better(trial, best) or (best.score == 0 and trial.peak > best.peak):
                best = trial
            if not rising:
                break  # throughput no longer rises: larger batches only add latency
        return best.candidate if best is not None else base

    def first_better(self, start: Candidate, variants: list[Candidate]) -> Candidate:
        """The best of ``start`` and ``variants`` (each must beat the best so far by ``GAIN``)."""
        best_trial = next((t for t in self.trials if t.candidate == start), None)
        best = start
        for cand in variants:
            trial = self.try_(cand)
            if trial is not None and self.better(trial, best_trial):
                best, best_trial = cand, trial
        return best

    def run(self) -> Candidate:
        spec = self.spec
        cand = self.batch_sizes()
        cand = self.first_better(cand, [replace(cand, max_wait_ms=w) for w in spec.waits_ms[1:]])
        counts = range(1, spec.max_workers_per_device + 1)
        workers = [replace(cand, workers_per_device=n) for n in counts if n != cand.workers_per_device]
        # The other backends at each count: process workers have an interpreter each (and the JPEG classifiers a
        # GPU decoder each, which torchvision runs one call at a time per process), so two may pay where two
        # threads do not.
        workers += [replace(cand, backend=b, workers_per_device=n)
                    for b in spec.backends if b != cand.backend for n in counts]
        cand = self.first_better(cand, workers)
        if spec.http:  # fewer and more front ends than the start: half, double, then 1
            n = cand.http_workers
            counts = [c for c in (n // 2, n * 2, 1) if 1 <= c <= self.max_http_workers() and c != n]
            cand = self.first_better(cand, [replace(cand, http_workers=c) for c in dict.fromkeys(counts)])
        else:
            self.not_tried.append("HTTP front ends: not tried (in-process pool, no HTTP)")
        return cand


def tune(spec: TuneSpec, *, on_trial: Callable[[Trial], None] | None = None,
         on_measure: Callable[[Candidate, Measurement], None] | None = None) -> TuneResult:
    """Search the configurations of ``spec`` (see the module docs) and return what was measured.

    ``on_trial`` is called after each trial and ``on_measure`` after each concurrency level (a live view).
    Ctrl-C (``KeyboardInterrupt``) ends the search early: the result holds the trials finished until then and
    says ``interrupted``.
    """
    from gpufleet.devices.nvml import mps_running
    from gpufleet.server.config_file import machine_facts

    t0 = time.monotonic()

    host = _Host(spec)

    def run(cand: Candidate) -> Trial:
        def measured(m: Measurement) -> None:
            if on_measure is not None:
                on_measure(cand, m)

        return host.trial(cand, measured)

    search = _Search(spec, run, on_trial or (lambda t: None), host.reuses)
    interrupted = False
    try:
        search.run()
    except KeyboardInterrupt:  # Ctrl-C: keep what was measured; the trial under way is dropped
        interrupted = True
        search.not_tried.append(f"the rest of the search: interrupted (Ctrl-C) after {len(search.trials)} trial(s)")
    finally:
        host.close()
    if not mps_running():
        search.not_tried.append("MPS: not tried (no MPS daemon runs; start one with `gpufleet mps start`)")
    return TuneResult(spec, search.best, search.trials, search.not_tried, machine_facts(), time.monotonic() - t0,
                      interrupted)
