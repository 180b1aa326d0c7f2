"""The batch-size probe (``max_batch_size=0``): its choice on cost models, its time bound, and its cache, which
lets a second pool of the same model start at the probed size without probing."""

from __future__ import annotations

import json
import time

import pytest
import torch

from gpufleet import Pool
from gpufleet.engine.probe import ProbeResult, cache_file, choose, probe
from gpufleet.models import Model


def _rate(fixed_s: float, per_item_s: float, oom_above: int | None = None):
    """items/s of a batch that costs ``fixed_s + per_item_s * n`` (kernel launches + work), out of memory past
    ``oom_above``."""
    def measure(n: int) -> float:
        if oom_above is not None and n > oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return n / (fixed_s + per_item_s * n)
    return measure


def test_throughput_that_keeps_rising_takes_the_largest_size_that_fits() -> None:
    r = probe(_rate(5e-3, 1e-4, oom_above=64), cap=256)
    assert (r.size, r.stopped) == (64, "memory") and sorted(r.rates) == [1, 2, 4, 8, 16, 32, 64]


def test_saturated_throughput_takes_the_smallest_size_as_fast() -> None:
    r = probe(lambda n: n / max(4e-3, 2.5e-4 * n), cap=256)  # flat from 16 on
    assert r.size == 16 and r.rates[16] == r.rates[128]
    r = probe(_rate(5e-3, 1e-4), cap=256)  # rises slowly to the cap: the smallest size within 3% of the best
    assert r.size == 256 or r.rates[r.size] >= 0.97 * max(r.rates.values())


def test_a_fixed_size_that_beats_the_choice_wins() -> None:
    assert choose({8: 990.0, 16: 900.0, 32: 1000.0}) == (32, 1000.0)
    assert choose({1: 10.0, 2: 30.0, 4: 29.5}) == (2, 30.0)


def test_the_fixed_sizes_are_measured_even_past_a_dip() -> None:
    # slower at 4 and 8 (noise), fastest at 128: stopping at the first dips would have settled on 2
    rates = {1: 100.0, 2: 200.0, 4: 150.0, 8: 150.0, 16: 300.0, 32: 500.0, 64: 700.0, 128: 900.0, 256: 800.0}
    r = probe(rates.__getitem__, cap=256)
    assert r.size == 128
    r = probe(rates.__getitem__, cap=256, fixed=False)  # CPU devices: the first plateau ends it
    assert (r.size, r.stopped) == (2, "slower")


def test_the_probe_is_bounded_in_time() -> None:
    now = [0.0]

    def slow(n: int) -> float:
        now[0] += 10.0  # each size takes 10 s
        return float(n)

    # after size 1 (10 s) size 2 is guessed to end at 30 s: within 35; after size 2, size 4 would end at 40
    r = probe(slow, cap=256, budget_s=35.0, clock=lambda: now[0])
    assert r.stopped == "budget" and sorted(r.rates) == [1, 2] and r.size == 2 and r.seconds == 20.0


def test_nothing_measured_raises() -> None:
    with pytest.raises(torch.cuda.OutOfMemoryError):
        probe(_rate(1e-3, 1e-4, oom_above=0), cap=8)


class SleepCost(Model):
    """Sleeps 2 ms + 20 µs per item per batch; out of memory past 32 items; has an example input, so the pool
    probes at setup."""

    example_shape = (4,)
    example_dtype = torch.float32
    calls = 0  # predict calls, across instances of this process

    def setup(self, device: object) -> None:
        pass

    def predict(self, batch: list) -> list:
        type(self).calls += 1
        if len(batch) > 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        time.sleep(2e-3 + 2e-5 * len(batch))
        return [float(x.sum()) for x in batch]


@pytest.mark.timeout(60)
def test_pool_probes_at_setup_then_starts_from_the_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLEET_CACHE_DIR", str(tmp_path))
    SleepCost.calls = 0
    with Pool(SleepCost, cpu_devices=1, max_batch_size=0, max_probe_batch=256) as pool:
        assert SleepCost.calls > 0  # before the pool was ready
        w = pool.stats()["per_worker_stats"][0]
        assert w["max_batch_size"] == 32 and w["batch_probe"]["stopped"] in ("memory", "slower")
        assert not w["batch_probe"]["cached"]
        assert pool.submit(torch.ones(4)).result(timeout=10) == 4.0
    entries = json.loads(cache_file().read_text())  # type: ignore[union-attr]
    assert len(entries) == 1 and "SleepCost" in next(iter(entries)) and "CPU" in next(iter(entries))
    SleepCost.calls = 0
    with Pool(SleepCost, cpu_devices=1, max_batch_size=0, max_probe_batch=256) as pool:
        assert SleepCost.calls == 0  # cached: no probing
        w = pool.stats()["per_worker_stats"][0]
        assert w["max_batch_size"] == 32 and w["batch_probe"]["cached"]
    assert isinstance(ProbeResult(1, 1.0).describe(), dict)


@pytest.mark.timeout(60)
def test_no_cache_when_disabled(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLEET_CACHE_DIR", "")
    assert cache_file() is None
    SleepCost.calls = 0
    with Pool(SleepCost, cpu_devices=1, max_batch_size=0, max_probe_batch=8) as pool:
        assert SleepCost.calls > 0 and pool.stats()["per_worker_stats"][0]["max_batch_size"] == 8
