"""LatencyWindow's histogram: built when read, cumulative across reads, scaled when the ring overflowed."""

from __future__ import annotations

import numpy as np

from gpufleet.engine.stats import BATCH_BUCKETS, LATENCY_BUCKETS, LatencyWindow, WorkerStats


def test_histogram_counts_every_sample_once_across_reads() -> None:
    w = LatencyWindow(size=8)
    for v in (0.0001, 0.003, 0.003):
        w.add(v)
    h = w.histogram()
    assert h.sum() == 3 and h[0] == 1 and h[LATENCY_BUCKETS.index(.005)] == 2
    for v in (0.2, 20.0):
        w.add(v)
    h = w.histogram()
    assert h.sum() == 5 and h[-1] == 1 and h[LATENCY_BUCKETS.index(.25)] == 1
    assert np.array_equal(w.histogram(), h)  # a read with nothing new adds nothing


def test_histogram_scales_the_window_when_more_arrived_than_it_holds() -> None:
    w = LatencyWindow(size=4)
    for _ in range(10):
        w.add(0.002)
    h = w.histogram()
    assert h.sum() == 10 and h[LATENCY_BUCKETS.index(.0025)] == 10


def test_batch_sizes_by_power_of_two() -> None:
    s = WorkerStats()
    for n in (1, 2, 3, 4, 5, 4097):
        s.record_batch(n, 0.0)
    assert s.batch_sizes[0] == 1 and s.batch_sizes[1] == 1 and s.batch_sizes[2] == 2 and s.batch_sizes[3] == 1
    assert s.batch_sizes[len(BATCH_BUCKETS)] == 1
