"""The batch step every backend runs: a model error fails only the item(s) it belongs to."""

from __future__ import annotations

import time

import pytest

from gpufleet import Pool
from gpufleet.devices import Device
from gpufleet.engine.step import BatchStep
from gpufleet.errors import InputError, WorkerError
from tests.engine.process_models import Doubler

CPU = Device(index=0, kind="cpu", name="CPU")


class FailsOn:
    """Doubles numbers; raises for the items in ``bad`` (the whole batch call fails), counting calls."""

    def __init__(self, bad: set, message: str = "cannot read this one") -> None:
        self.bad, self.message, self.calls = bad, message, 0

    def setup(self, device: Device) -> None:
        self.device = device

    def predict(self, batch: list) -> list:
        self.calls += 1
        if any(x in self.bad for x in batch):
            raise ValueError(self.message)
        return [x * 2 for x in batch]


def test_a_model_error_is_isolated_to_its_item() -> None:
    model = FailsOn({5})
    step = BatchStep(model, CPU, "w0")
    outputs, errors = step.finish(list(range(8)))
    assert [o for i, o in enumerate(outputs) if i != 5] == [0, 2, 4, 6, 8, 12, 14]
    assert list(errors) == [5] and isinstance(errors[5], WorkerError) and "cannot read this one" in str(errors[5])
    assert step.isolated == 3 and model.calls == 7  # 8 -> 4 -> 2 -> 1: three splits


def test_isolation_is_bounded_by_two_n_minus_one_calls() -> None:
    model = FailsOn(set(range(8)))
    outputs, errors = BatchStep(model, CPU, "w0").finish(list(range(8)))
    assert sorted(errors) == list(range(8)) and model.calls == 15


def test_a_sticky_cuda_error_is_not_retried() -> None:
    model = FailsOn({1}, "CUDA error: an illegal memory access was encountered")
    with pytest.raises(WorkerError, match="illegal memory access"):
        BatchStep(model, CPU, "w0").finish([0, 1, 2, 3])
    assert model.calls == 1


@pytest.mark.timeout(60)
def test_one_bad_item_does_not_fail_its_neighbours_on_threads() -> None:
    with Pool(FailsOn({"bad"}), cpu_devices=1, max_batch_size=8, max_wait_ms=200) as pool:
        futures = [pool.submit(x) for x in (1, 2, "bad", 4)]
        time.sleep(0.05)
        assert [f.result(timeout=10) for i, f in enumerate(futures) if i != 2] == [2, 4, 8]
        with pytest.raises(WorkerError, match="cannot read this one"):
            futures[2].result(timeout=10)
        assert pool.stats()["isolated_batches"] >= 1


@pytest.mark.timeout(120)
def test_one_bad_item_does_not_fail_its_neighbours_in_a_process_worker() -> None:
    with Pool(Doubler, backend="process", cpu_devices=1, max_batch_size=8, max_wait_ms=300) as pool:
        pool.submit(0).result(timeout=60)
        futures = [pool.submit(x) for x in (1, 2, "bad", 4)]
        assert [f.result(timeout=30) for i, f in enumerate(futures) if i != 2] == [2, 4, 8]
        with pytest.raises(InputError, match="bad item"):
            futures[2].result(timeout=30)
        assert pool.stats()["isolated_batches"] >= 1
