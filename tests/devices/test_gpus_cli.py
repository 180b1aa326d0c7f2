"""``gpufleet gpus``: the table and the JSON document, on CPU devices and on faked GPUs."""

from __future__ import annotations

import importlib
import json
import types

import pytest
import torch

from gpufleet.devices import nvml

# The module, even if gpufleet/cli/__init__.py re-exports the function under the same name.
cli = importlib.import_module("gpufleet.cli.gpus")

ARCHS = [
    ((6, 1), "Pascal", "fp32"),
    ((7, 0), "Volta", "fp16"),
    ((7, 5), "Turing", "fp16"),
    ((8, 0), "Ampere", "bf16+tf32"),
    ((8, 9), "Ada", "bf16+tf32"),
    ((9, 0), "Hopper", "bf16+tf32"),
    ((10, 0), "Blackwell", "bf16+tf32"),
    ((12, 0), "Blackwell", "bf16+tf32"),
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("CUDA_VISIBLE_DEVICES", "GPU_IDS", "GPUFLEET_GPUS", "GPUFLEET_CPU_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(nvml, "mps_running", lambda: False)


def fake_gpus(monkeypatch, ccs, physical, *, util=None):
    """torch sees one GPU per compute capability; they are nvidia-smi GPUs ``physical``; NVML reports ``util``."""
    uuids = [f"GPU-{i:04d}" for i in range(max(physical) + 1)]
    props = [
        types.SimpleNamespace(name=f"Fake sm_{a}{b}", total_memory=int(24e9), major=a, minor=b, uuid=uuids[p][4:])
        for (a, b), p in zip(ccs, physical, strict=True)
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(props))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    monkeypatch.setattr(nvml, "gpu_uuids", lambda: uuids)
    monkeypatch.setattr(nvml, "device_count", lambda: len(uuids))
    monkeypatch.setattr(nvml, "gpu_utilization", lambda p: None if util is None else util.get(p))


def test_table_on_cpu_devices(capsys):
    assert cli.gpus(cpu_devices=4) == 0
    out = capsys.readouterr().out
    for i in range(4):
        assert f"cpu:{i}" in out and f"CPU (simulated device {i})" in out
    assert "fp32" in out
    assert "MPS daemon: not running" in out
    assert "CUDA_VISIBLE_DEVICES" not in out


def test_table_says_the_devices_are_simulated_without_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.gpus(cpu_devices=2) == 0
    assert "no GPU found: these 2 devices are simulated on the CPU" in capsys.readouterr().out


def test_json_on_cpu_devices(capsys, monkeypatch):
    monkeypatch.setattr(nvml, "mps_running", lambda: True)
    assert cli.gpus(json_output=True, cpu_devices=4) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"devices", "cuda_visible_devices", "mps_running", "torch", "cuda", "simulated"}
    assert doc["simulated"] is True
    assert [d["label"] for d in doc["devices"]] == ["cpu:0", "cpu:1", "cpu:2", "cpu:3"]
    assert doc["devices"][0]["precision"] == "fp32" and doc["devices"][0]["utilization"] is None
    assert doc["mps_running"] is True
    assert doc["cuda_visible_devices"] is None
    assert doc["torch"] == torch.__version__ and doc["cuda"] == torch.version.cuda


def test_table_shows_every_architecture(capsys, monkeypatch):
    fake_gpus(monkeypatch, [cc for cc, *_ in ARCHS], list(range(len(ARCHS))))
    assert cli.gpus() == 0
    lines = capsys.readouterr().out.splitlines()
    for i, ((a, b), name, precision) in enumerate(ARCHS):
        row = next(line for line in lines if f"cuda:{i} " in line)
        assert f"{a}.{b}" in row and name in row and precision in row and "24.0" in row


def test_remap_note_and_utilisation(capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    util = {1: {"util_gpu": 87.0, "memory_used_gb": 12.34}, 3: {"util_gpu": None, "memory_used_gb": None}}
    fake_gpus(monkeypatch, [(9, 0), (9, 0)], [1, 3], util=util)
    assert cli.gpus() == 0
    out = capsys.readouterr().out
    assert "CUDA_VISIBLE_DEVICES=1,3: cuda:0 is GPU 1, cuda:1 is GPU 3" in out
    row0 = next(line for line in out.splitlines() if "cuda:0 " in line and "Fake" in line)
    row1 = next(line for line in out.splitlines() if "cuda:1 " in line and "Fake" in line)
    assert "87" in row0 and "12.3" in row0
    assert row1.count(" - ") >= 2  # unknown utilisation and memory


def test_json_on_fake_gpus(capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    fake_gpus(monkeypatch, [(8, 6)], [2], util={2: {"util_gpu": 5.0}})
    assert cli.gpus(json_output=True) == 0
    doc = json.loads(capsys.readouterr().out)
    (dev,) = doc["devices"]
    assert dev["label"] == "cuda:0" and dev["physical_index"] == 2 and dev["uuid"] == "GPU-0002"
    assert dev["compute_capability"] == [8, 6] and dev["arch"] == "Ampere" and dev["tf32"] is True
    assert dev["utilization"] == {"util_gpu": 5.0}
    assert doc["cuda_visible_devices"] == "2"
    assert doc["simulated"] is False


def test_bad_config_is_an_exit_code(capsys):
    assert cli.gpus(cpu_devices=0) == 2
    assert "cpu_devices" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_gpus_json(capsys):
    assert cli.gpus(json_output=True) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["devices"]) == torch.cuda.device_count()
    assert all(d["kind"] == "cuda" for d in doc["devices"])
