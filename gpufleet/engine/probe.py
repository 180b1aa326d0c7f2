"""The batch-size probe of ``max_batch_size=0``: measure a model's throughput at a few batch sizes, within a
time budget, and remember the answer per (model, device, input shape) so the next start takes it at once.

A worker probes when its model can make an example input (``example_shape``/``example_dtype``, as every
:class:`gpufleet.TorchModel` has) right after its setup, so the pool is ready — and any clock of the caller
starts — only after it; other models are probed on their first real item. The sizes tried are the powers of
two up to the cap, the fixed sizes :data:`FIXED_SIZES` always among them (unless memory ends sooner), and the
answer is the smallest size within 3% of the best rate, never one that a fixed size beat. A probe takes at
most :data:`PROBE_BUDGET_S` (it says so in the log while it runs); its answer and rates are in the worker's
stats (``batch_probe``), apart from any throughput the caller measures afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpufleet.engine.oom import empty_cache, is_oom

__all__ = ["FIXED_SIZES", "PROBE_BUDGET_S", "ProbeResult", "cache_file", "choose", "example_items", "probe",
           "probe_worker_model"]

log = logging.getLogger(__name__)

FIXED_SIZES = (32, 128)  # always measured: the pool's default and the served classifiers' (docs/serving.md)
PROBE_BUDGET_S = 30.0  # sizes not started within this many seconds are not tried
_MIN_S = 0.1  # each size is timed over at least this long ...
_MIN_REPS = 3  # ... and this many batches
_NEAR = 0.97  # a smaller size within 3% of the best rate is as good, at less latency
_CACHE_LOCK = threading.Lock()


@dataclass
class ProbeResult:
    """What a probe chose: ``size`` at ``rate`` items/s; ``rates`` by size; ``seconds`` it took (0 when
    ``cached``); ``stopped`` why it tried no larger size ("cap", "memory", "budget", "slower", "error")."""

    size: int
    rate: float
    seconds: float = 0.0
    cached: bool = False
    stopped: str = "cap"
    rates: dict[int, float] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"size": self.size, "items_per_s": round(self.rate, 1), "seconds": round(self.seconds, 3),
                "cached": self.cached, "stopped": self.stopped,
                "rates": {str(k): round(v, 1) for k, v in sorted(self.rates.items())}}


def _sizes(cap: int) -> list[int]:
    sizes = {1 << k for k in range(cap.bit_length()) if 1 << k <= cap} | {cap}
    return sorted(sizes)


def choose(rates: dict[int, float]) -> tuple[int, float]:
    """The size to serve at from measured ``rates``: the smallest within 3% of the best, unless a fixed size
    (:data:`FIXED_SIZES`) was measured faster than that one."""
    best = max(rates.values())
    size = min(s for s, r in rates.items() if r >= _NEAR * best)
    for fixed in FIXED_SIZES:
        if fixed in rates and rates[fixed] > rates[size]:
            size = fixed
    return size, rates[size]


def probe(measure: Callable[[int], float], *, cap: int, budget_s: float = PROBE_BUDGET_S,
          clock: Callable[[], float] = time.monotonic, fixed: bool = True) -> ProbeResult:
    """Measure ``measure(size)`` (items/s at that batch size) from size 1 up to ``cap`` and choose (see
    :func:`choose`). Stops at out of memory (``measure`` raised it), before a size that would end past
    ``budget_s`` (it is guessed to take twice the last one), or once two sizes in a row were slower than the
    best — past the fixed sizes when ``fixed``. Raises only when no size could be measured."""
    t0 = clock()
    rates: dict[int, float] = {}
    stopped, worse, last = "cap", 0, 0.0
    floor = max((f for f in FIXED_SIZES if f <= cap), default=0) if fixed else 0
    for size in _sizes(cap):
        if rates and clock() - t0 + 2 * last > budget_s:
            stopped = "budget"
            break
        t1 = clock()
        try:
            rate = measure(size)
        except Exception as exc:
            if not rates:
                raise
            stopped = "memory" if is_oom(exc) else "error"
            if stopped == "error":
                log.warning("batch size probe stopped at %d: %s: %s", size, type(exc).__name__, exc)
            break
        last = clock() - t1
        best = max(rates.values(), default=0.0)
        rates[size] = rate
        worse = worse + 1 if rate < best else 0
        if worse >= 2 and size >= floor:
            stopped = "slower"
            break
    size, rate = choose(rates)
    return ProbeResult(size, rate, clock() - t0, False, stopped, rates)


# -- a worker's model --------------------------------------------------------------------------------------
def example_items(model: Any, n: int, sample: Any = None) -> list | None:
    """``n`` inputs for ``model``: ``sample`` repeated when given, else zeros of its ``example_shape`` (and
    ``example_dtype``) when it has one, else ``None`` (the worker probes on its first real item)."""
    if sample is not None:
        return [sample] * n
    shape = getattr(model, "example_shape", None)
    if not shape:
        return None
    import torch

    one = torch.zeros(tuple(shape), dtype=getattr(model, "example_dtype", None) or torch.float32)
    return [one] * n


def _rate(model: Any, items: list, depth: int) -> float:
    """Items/s of ``model`` on ``items`` as a worker runs it: ``depth`` batches in flight with launch/collect."""
    pipelined = callable(getattr(model, "launch", None)) and callable(getattr(model, "collect", None))
    inflight: deque[Any] = deque()

    def once() -> None:
        if not pipelined:
            model.predict(items)
            return
        inflight.append(model.launch(items))
        if len(inflight) >= depth:
            model.collect(inflight.popleft())

    once()  # warm-up at this size (allocations, kernels chosen)
    while inflight:
        model.collect(inflight.popleft())
    reps, t0 = 0, time.perf_counter()
    while reps < _MIN_REPS or time.perf_counter() - t0 < _MIN_S:
        once()
        reps += 1
    while inflight:
        model.collect(inflight.popleft())
    return reps * len(items) / max(time.perf_counter() - t0, 1e-9)


def _identity(model: Any) -> str:
    parts = [f"{type(model).__module__}.{type(model).__qualname__}"]
    for attr in ("name", "precision", "cuda_graphs", "compile", "image_size"):
        value = getattr(model, attr, None)
        if value is not None and not callable(value):
            parts.append(f"{attr}={value}")
    fn = getattr(model, "fn", None)  # a pooled plain function
    if fn is not None:
        parts.append(f"fn={getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}")
    return " ".join(parts)


def cache_file() -> Path | None:
    """Where probed sizes are kept: ``$GPUFLEET_CACHE_DIR/batch_sizes.json`` (set it empty: no cache), else
    ``$XDG_CACHE_HOME/gpufleet/`` or ``~/.cache/gpufleet/``."""
    root = os.environ.get("GPUFLEET_CACHE_DIR")
    if root is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "gpufleet")
    return Path(root) / "batch_sizes.json" if root else None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _lookup(key: str) -> ProbeResult | None:
    path = cache_file()
    if path is None:
        return None
    with _CACHE_LOCK:
        entry = _read(path).get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) or entry["size"] < 1:
        return None
    rates = {int(k): float(v) for k, v in (entry.get("rates") or {}).items()}
    return ProbeResult(entry["size"], float(entry.get("rate", 0.0)), 0.0, True, str(entry.get("stopped", "")), rates)


def _store(key: str, result: ProbeResult) -> None:
    path = cache_file()
    if path is None:
        return
    with _CACHE_LOCK:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = _read(path)
            data[key] = {**asdict(result), "cached": False, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(path)
        except OSError as exc:
            log.warning("could not cache the probed batch size in %s: %s", path, exc)


def probe_worker_model(model: Any, device: Any, *, cap: int, depth: int, name: str, sample: Any = None,
                       budget_s: float = PROBE_BUDGET_S) -> ProbeResult | None:
    """Probe ``model`` (set up on ``device``) as a worker runs it, on example inputs or ``sample``; cached per
    (model, device name, input shape and dtype, cap) when the input has a shape. ``None`` without an input."""
    items = example_items(model, 1, sample)
    if items is None:
        return None
    shape = getattr(items[0], "shape", None)
    key = None
    if shape is not None:
        dtype = getattr(items[0], "dtype", "")
        key = f"{_identity(model)} | {device.name or device.kind} | {tuple(shape)} {dtype} | cap={cap}"
        hit = _lookup(key)
        if hit is not None and hit.size <= cap:
            log.info("%s: batch size %d (cached in %s)", name, hit.size, cache_file())
            return hit
    where = cache_file() if key is not None else None
    log.warning("%s: probing the batch size (up to %d, at most ~%.0f s)%s", name, cap, budget_s,
                f"; the answer is kept in {where} for the next start" if where is not None else "")

    def measure(size: int) -> float:
        try:
            return _rate(model, example_items(model, size, sample) or [], depth)
        except Exception as exc:
            if is_oom(exc):
                empty_cache(device)
            raise

    # The fixed sizes are always measured on GPUs; CPU devices saturate early and stop at the first plateau.
    result = probe(measure, cap=cap, budget_s=budget_s, fixed=device.is_cuda)
    log.warning("%s: probed batch size %d (%.0f items/s) in %.1f s (stopped: %s)", name, result.size, result.rate,
                result.seconds, result.stopped)
    if key is not None:
        _store(key, result)
    return result
