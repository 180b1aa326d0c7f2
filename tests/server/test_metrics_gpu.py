"""GPU series in /metrics: every NVML reading under a conventional name and unit, labelled device/gpu_id/uuid.

No GPU here: the pool is a real CPU pool whose device list also names one CUDA device, and NVML readings come
from a stand-in for ``gpu_utilization`` (on the GPU machine the same code reads the real NVML)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpufleet import Device, Pool
from gpufleet.server import metrics as metrics_module
from gpufleet.server.metrics import Metrics


def test_gpu_series_names_units_and_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = {"memory_used_gb": 3.5, "memory_total_gb": 85.0, "util_gpu": 40.0, "util_mem": 10.0,
                "temperature_c": 35.0, "power_w": 120.0, "power_limit_w": 700.0, "sm_clock_mhz": 1980.0,
                "mem_clock_mhz": 2619.0, "nvdec_util": 5.0, "nvenc_util": None, "processes": 1.0}
    monkeypatch.setattr(metrics_module, "gpu_utilization", lambda physical: readings if physical == 3 else None)
    with Pool(lambda b: b, cpu_devices=1) as pool:
        pool.devices = [*pool.devices, Device(index=0, kind="cuda", uuid="GPU-abc", physical_index=3)]
        text = Metrics(pool).render().decode()
    samples = {s.name: s for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name.startswith("gpufleet_gpu_")}
    assert samples["gpufleet_gpu_memory_used_bytes"].value == pytest.approx(3.5e9)
    assert samples["gpufleet_gpu_utilization_ratio"].value == pytest.approx(0.4)
    assert samples["gpufleet_gpu_temperature_celsius"].value == 35.0
    assert samples["gpufleet_gpu_power_limit_watts"].value == 700.0
    assert samples["gpufleet_gpu_sm_clock_hertz"].value == pytest.approx(1.98e9)
    assert samples["gpufleet_gpu_decoder_utilization_ratio"].value == pytest.approx(0.05)
    assert "gpufleet_gpu_encoder_utilization_ratio" not in samples  # not reported: no series, not a zero
    assert samples["gpufleet_gpu_power_watts"].labels == {"device": "cuda:0", "gpu_id": "0", "uuid": "GPU-abc"}
