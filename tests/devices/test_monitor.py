"""Monitor: periodic sampling into a ring buffer; CPU devices report the host, GPUs go through NVML."""

from __future__ import annotations

import time

import pytest

from gpufleet.devices import nvml
from gpufleet.devices.device import Device
from gpufleet.devices.monitor import Monitor


def test_cpu_devices_report_host_cpu_and_memory() -> None:
    m = Monitor([Device(index=i, kind="cpu", name="CPU") for i in range(2)], period_s=0.05, history=5)
    sum(i * i for i in range(200_000))  # some CPU time between the two readings
    readings = m.sample()
    assert [r["device"] for r in readings] == ["cpu:0", "cpu:1"]
    assert readings[0]["memory_total_gb"] > 0 and 0 < readings[0]["memory_used_gb"] <= readings[0]["memory_total_gb"]
    assert readings[0]["util_gpu"] is None or 0.0 <= readings[0]["util_gpu"] <= 100.0


@pytest.mark.timeout(20)
def test_background_sampling_keeps_a_bounded_history() -> None:
    with Monitor([Device(index=0, kind="cpu")], period_s=0.01, history=3) as m:
        deadline = time.monotonic() + 5
        while len(m.history()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        assert len(m.history()) == 3  # the ring buffer keeps only the last 3
    assert m.latest()[0]["device"] == "cpu:0"


def test_gpu_readings_come_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake(physical: int) -> dict:
        seen.append(physical)
        return {"util_gpu": 50.0, "memory_used_gb": 1.0, "memory_total_gb": 80.0, "nvdec_util": 3.0}

    monkeypatch.setattr(nvml, "gpu_utilization", fake)
    gpu = Device(index=0, kind="cuda", name="H100", uuid="GPU-x", physical_index=3)
    (reading,) = Monitor([gpu]).sample()
    assert seen == [3] and reading["util_gpu"] == 50.0 and reading["uuid"] == "GPU-x"


def test_gpu_without_nvml_reports_what_torch_knows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml, "gpu_utilization", lambda p: None)
    (reading,) = Monitor([Device(index=1, kind="cuda", memory_gb=80.0)]).sample()
    assert reading["device"] == "cuda:1" and reading["memory_total_gb"] == 80.0


def test_bad_period() -> None:
    with pytest.raises(ValueError):
        Monitor([], period_s=0)
