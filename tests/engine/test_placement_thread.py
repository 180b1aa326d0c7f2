"""Thread workers report where their weights are; a pool whose copies are not on their own devices refuses
to start (the bug where every copy silently lands on one GPU)."""

from __future__ import annotations

import pytest
import torch

from gpufleet import DeviceError, Pool, TorchModel
from gpufleet.models import Model


class _Misplaced(Model):
    """Ignores its device: keeps the weights somewhere else (the meta device stands in for "cuda:0")."""

    def setup(self, device) -> None:
        self.module = torch.nn.Linear(2, 2, device="meta")

    def predict(self, batch: list) -> list:
        return batch


def test_weights_on_the_wrong_device_refuse_start() -> None:
    with pytest.raises(DeviceError, match=r"worker-0@cpu:0 is meant for cpu but its model weights are on meta"):
        Pool(_Misplaced, cpu_devices=2)


def test_each_worker_reports_its_placement() -> None:
    with Pool(TorchModel(torch.nn.Linear(3, 1)), cpu_devices=2) as pool:
        rows = pool.stats()["per_worker_stats"]
        assert [r["weights_on"] for r in rows] == ["cpu", "cpu"]
        assert [r["context_on"] for r in rows] == [None, None]  # no CUDA context on CPU devices
    with Pool(lambda b: b, cpu_devices=1) as pool:  # a plain function has no weights to check
        assert pool.stats()["per_worker_stats"][0]["weights_on"] is None


class _CpuTable(Model):
    """Weights on its device, plus a small CPU-side lookup tensor: fine."""

    def setup(self, device) -> None:
        self.table = torch.arange(4)
        self.module = torch.nn.Linear(2, 2, device=device.torch)

    def predict(self, batch: list) -> list:
        return batch


def test_cpu_side_tensors_are_not_misplacement() -> None:
    with Pool(_CpuTable, cpu_devices=1) as pool:
        assert pool.stats()["per_worker_stats"][0]["weights_on"] == "cpu"
