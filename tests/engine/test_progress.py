"""report_progress from a thread worker's predict: the item's callback and the worker's stats see it."""

from __future__ import annotations

import threading

from gpufleet import Pool, report_progress
from tests.waiting import wait_until


def test_progress_reaches_the_callback_and_the_stats_until_answered() -> None:
    gate = threading.Event()

    def slow(batch: list) -> list:
        report_progress("second item", index=1)  # only item 1 of the batch: not ours
        for step in (1, 2):
            report_progress({"step": step, "steps": 2})
        gate.wait(10)
        return batch

    report_progress("outside predict")  # nobody listens: a no-op
    seen: list = []
    with Pool(slow, cpu_devices=1, max_batch_size=1) as pool:
        fut = pool.submit("a", progress=seen.append)
        workers = lambda: pool.stats()["per_worker_stats"]  # noqa: E731
        assert wait_until(lambda: workers()[0]["progress"] == {"step": 2, "steps": 2}, 10)
        gate.set()
        assert fut.result(timeout=10) == "a"
        assert wait_until(lambda: len(seen) == 2, 5)
        assert seen == [{"step": 1, "steps": 2}, {"step": 2, "steps": 2}]
        assert workers()[0]["progress"] is None
