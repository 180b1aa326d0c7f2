"""Device discovery: CPU fallback, fake CUDA devices, CUDA_VISIBLE_DEVICES remapping, select() parsing, NVML."""

from __future__ import annotations

import os
import types

import pytest
import torch

from gpufleet.devices import Device, discover, mps_running, nvml, select
from gpufleet.devices.discovery import remap_visible
from gpufleet.errors import ConfigError

UUIDS = ["GPU-aaaa0000-0000", "GPU-bbbb1111-1111", "GPU-cccc2222-2222", "GPU-dddd3333-3333"]
ENVS = ("CUDA_VISIBLE_DEVICES", "GPU_IDS", "GPUFLEET_GPUS", "GPUFLEET_CPU_DEVICES", "CUDA_MPS_PIPE_DIRECTORY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENVS:
        monkeypatch.delenv(name, raising=False)


def fake_cuda(monkeypatch, ccs, *, physical=None, nv_uuids=None, visible=None, torch_uuids=True):
    """Pretend torch sees GPUs with compute capabilities ``ccs`` (physical GPUs ``physical`` of ``nv_uuids``)."""
    physical = list(range(len(ccs))) if physical is None else physical
    props = [
        types.SimpleNamespace(
            name=f"Fake GPU {p}",
            total_memory=80 * 10**9,
            major=cc[0],
            minor=cc[1],
            uuid=UUIDS[p].removeprefix("GPU-") if torch_uuids else "",
        )
        for cc, p in zip(ccs, physical, strict=True)
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(props))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    monkeypatch.setattr(nvml, "gpu_uuids", lambda: nv_uuids)
    monkeypatch.setattr(nvml, "device_count", lambda: None if nv_uuids is None else len(nv_uuids))
    monkeypatch.setattr(nvml, "mig_parents", lambda: {})
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


# --- CPU fallback -------------------------------------------------------------------------------------------


def test_cpu_fallback_with_four_devices():
    devices = discover(cpu_devices=4)
    assert [d.label for d in devices] == ["cpu:0", "cpu:1", "cpu:2", "cpu:3"]
    assert all(d.kind == "cpu" and d.torch == "cpu" and d.precision == "fp32" for d in devices)
    assert devices[2].name == "CPU (simulated device 2)"
    assert len({d.uuid for d in devices}) == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU default")
def test_default_without_gpu_is_one_cpu_device():
    assert [d.label for d in discover()] == ["cpu:0"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU default")
def test_env_sets_default_cpu_count(monkeypatch):
    monkeypatch.setenv("GPUFLEET_CPU_DEVICES", "3")
    assert len(discover()) == 3
    assert len(discover(cpu_devices=2)) == 2  # explicit beats env


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_bad_cpu_count(bad):
    with pytest.raises(ConfigError, match="cpu_devices"):
        discover(cpu_devices=bad)


def test_bad_cpu_env(monkeypatch):
    monkeypatch.setenv("GPUFLEET_CPU_DEVICES", "many")
    with pytest.raises(ConfigError, match="GPUFLEET_CPU_DEVICES"):
        select("cpu")


# --- fake CUDA ------------------------------------------------------------------------------------------------


def test_fake_gpus_get_arch_and_precision(monkeypatch):
    fake_cuda(monkeypatch, [(9, 0), (7, 5)], nv_uuids=UUIDS[:2])
    h100, t4 = discover()
    assert (h100.label, h100.arch, h100.precision, h100.tf32) == ("cuda:0", "Hopper", "bf16", True)
    assert (t4.arch, t4.precision, t4.tf32, t4.compute_capability) == ("Turing", "fp16", False, (7, 5))
    assert h100.uuid == UUIDS[0] and h100.memory_gb == 80.0 and h100.physical_index == 0


def test_explicit_cpu_devices_win_over_gpus(monkeypatch):
    fake_cuda(monkeypatch, [(9, 0)], nv_uuids=UUIDS[:1])
    assert [d.label for d in discover(cpu_devices=2)] == ["cpu:0", "cpu:1"]


def test_physical_index_from_uuid_match(monkeypatch):
    # CUDA's default order is fastest-first, so torch index 0 may be nvidia-smi GPU 2 even without the env var.
    fake_cuda(monkeypatch, [(9, 0), (8, 0)], physical=[2, 0], nv_uuids=UUIDS[:3])
    assert [d.physical_index for d in discover()] == [2, 0]


def test_physical_index_from_visible_devices_without_uuids(monkeypatch):
    fake_cuda(monkeypatch, [(8, 6), (8, 6)], physical=[1, 3], nv_uuids=UUIDS, visible="1,3", torch_uuids=False)
    devices = discover()
    assert [(d.index, d.physical_index) for d in devices] == [(0, 1), (1, 3)]
    assert [d.uuid for d in devices] == [UUIDS[1], UUIDS[3]]  # filled in from NVML


def test_no_nvml_still_maps_integer_visible_devices(monkeypatch):
    fake_cuda(monkeypatch, [(8, 0), (8, 0)], physical=[2, 3], nv_uuids=None, visible="2,3")
    devices = discover()
    assert [d.physical_index for d in devices] == [2, 3]
    assert devices[0].uuid == UUIDS[2]  # from torch


def test_broken_cuda_falls_back_to_cpu(monkeypatch):
    fake_cuda(monkeypatch, [(8, 0)], nv_uuids=None)

    def boom(i):
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(torch.cuda, "get_device_properties", boom)
    assert [d.label for d in discover()] == ["cpu:0"]


# --- remap_visible (pure) --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, [0, 1, 2, 3]),
        ("1,3", [1, 3]),
        (" 3 , 0 ", [3, 0]),
        ("", []),
        ("-1", []),
        ("1,7,2", [1]),  # CUDA stops at the first out-of-range index
        ("0,0,1", [0]),  # ...and at a repeated one
        ("2,foo,1", [2]),
        ("GPU-cccc,1", [2, 1]),  # unique UUID prefix
        ("gpu-dddd3333-3333", [3]),  # case-insensitive
        ("bbbb1111", [1]),  # UUID without the GPU- prefix
        ("GPU-,1", []),  # ambiguous prefix
        ("MIG-GPU-aaaa0000-0000/1/0", [0]),  # legacy MIG form names its parent
        ("MIG-1234abcd", [2]),
    ],
)
def test_remap_visible(visible, expected):
    assert remap_visible(visible, 4, UUIDS, {"MIG-1234abcd-5678": 2}) == expected


def test_remap_visible_unknown_count_and_no_uuids():
    assert remap_visible("5,6", None) == [5, 6]
    assert remap_visible("GPU-aaaa", None) == []
    assert remap_visible(None, None) == []


# --- select -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "labels"),
    [
        (None, ["cpu:0", "cpu:1", "cpu:2", "cpu:3"]),
        ("all", ["cpu:0", "cpu:1", "cpu:2", "cpu:3"]),
        ("AUTO", ["cpu:0", "cpu:1", "cpu:2", "cpu:3"]),
        ("cpu", ["cpu:0", "cpu:1", "cpu:2", "cpu:3"]),
        ("0,2", ["cpu:0", "cpu:2"]),
        (" 3, 1 ", ["cpu:3", "cpu:1"]),  # order kept
        ("cpu:1", ["cpu:1"]),
        ([0, 2], ["cpu:0", "cpu:2"]),
        ((3,), ["cpu:3"]),
        (1, ["cpu:1"]),
    ],
)
def test_select_parsing(spec, labels):
    assert [d.label for d in select(spec, cpu_devices=4)] == labels


def test_select_reads_gpu_ids(monkeypatch):
    monkeypatch.setenv("GPU_IDS", "1,3")
    assert [d.index for d in select(cpu_devices=4)] == [1, 3]
    monkeypatch.setenv("GPU_IDS", "")
    monkeypatch.setenv("GPUFLEET_GPUS", "2")
    assert [d.index for d in select(cpu_devices=4)] == [2]
    assert [d.index for d in select("0", cpu_devices=4)] == [0]  # explicit beats env


def test_select_bad_env_names_the_variable(monkeypatch):
    monkeypatch.setenv("GPU_IDS", "0,9")
    with pytest.raises(ConfigError, match=r"GPU_IDS.*9.*available cpu indices: 0, 1"):
        select(cpu_devices=2)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("0,5", r"device index 5 does not exist; available cpu indices: 0, 1, 2, 3"),
        ([7, 8], r"device index 7, 8 does not exist"),
        ("1,1", r"device 1 more than once"),
        ([2, 0, 2], r"device 2 more than once"),
        ("", r"empty"),
        ("  ", r"empty"),
        ([], r"no device"),
        ("0,,1", r"empty entry"),
        ("zero", r"'zero'.*not an index"),
        ("-1", r"not an index"),
        ([0, "1"], r"not an index"),
        ([True], r"not an index"),
    ],
)
def test_select_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        select(spec, cpu_devices=4)


def test_select_on_fake_gpus(monkeypatch):
    fake_cuda(monkeypatch, [(9, 0), (9, 0), (8, 9)], nv_uuids=UUIDS[:3])
    assert [d.label for d in select("2,0")] == ["cuda:2", "cuda:0"]
    with pytest.raises(ConfigError, match="available cuda indices: 0, 1, 2"):
        select([3])


# --- NVML helpers ---------------------------------------------------------------------------------------------


def test_nvml_helpers_never_raise():
    # Whatever the machine: a bool, a dict or None, never an exception.
    assert isinstance(nvml.nvml_available(), bool)
    assert nvml.gpu_utilization(None) is None
    assert nvml.gpu_utilization(10_000) is None
    assert isinstance(nvml.mig_parents(), dict)


def test_discovery_sets_cuda_connections_unless_the_user_did(monkeypatch):
    monkeypatch.delenv("CUDA_DEVICE_MAX_CONNECTIONS", raising=False)
    discover()
    assert os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] == "32"  # before any CUDA context: side streams overlap
    monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "8")
    discover()
    assert os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] == "8"


def test_driver_loaded_without_torch(monkeypatch):
    # NVML or the driver's control device, either says a driver is here (a Ray actor then imports torch)
    monkeypatch.setitem(nvml._state, "tried", True)
    monkeypatch.setitem(nvml._state, "module", None)
    monkeypatch.setattr(nvml.os.path, "exists", lambda path: False)
    assert nvml.driver_loaded() is False
    monkeypatch.setattr(nvml.os.path, "exists", lambda path: path == "/dev/nvidiactl")
    assert nvml.driver_loaded() is True
    monkeypatch.setitem(nvml._state, "module", object())
    monkeypatch.setattr(nvml.os.path, "exists", lambda path: False)
    assert nvml.driver_loaded() is True


def fake_pynvml(monkeypatch, *, util_error=False):
    class NVMLError(Exception):
        pass

    handles = {i: f"h{i}" for i in range(2)}

    def utilization(h):
        if util_error:
            raise NVMLError("Not Supported")
        return types.SimpleNamespace(gpu=42, memory=7)

    def mig_handle(h, j):
        if (h, j) != ("h1", 0):
            raise NVMLError("Not Found")
        return "mig10"

    mod = types.SimpleNamespace(
        NVML_TEMPERATURE_GPU=0,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: handles[i],
        nvmlDeviceGetUUID=lambda h: {"h0": b"GPU-aaaa", "h1": "GPU-bbbb", "mig10": "MIG-ffff"}[h],
        nvmlDeviceGetUtilizationRates=utilization,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=3 * 10**9, total=80 * 10**9),
        nvmlDeviceGetTemperature=lambda h, sensor: 55,
        nvmlDeviceGetPowerUsage=lambda h: 123_000,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700_000,
        NVML_CLOCK_SM=1,
        NVML_CLOCK_MEM=2,
        nvmlDeviceGetClockInfo=lambda h, clock: 1980 if clock == 1 else 2619,
        nvmlDeviceGetDecoderUtilization=lambda h: (12, 167000),
        nvmlDeviceGetComputeRunningProcesses=lambda h: ["p1", "p2"],
        nvmlDeviceGetMaxMigDeviceCount=lambda h: 7,
        nvmlDeviceGetMigDeviceHandleByIndex=mig_handle,
    )
    monkeypatch.setitem(nvml._state, "tried", True)
    monkeypatch.setitem(nvml._state, "module", mod)


def test_nvml_with_fake_library(monkeypatch):
    fake_pynvml(monkeypatch)
    assert nvml.nvml_available()
    assert nvml.gpu_uuids() == ["GPU-aaaa", "GPU-bbbb"]
    assert nvml.mig_parents() == {"MIG-ffff": 1}
    assert nvml.gpu_utilization(1) == {
        "util_gpu": 42.0,
        "util_mem": 7.0,
        "memory_used_gb": 3.0,
        "memory_total_gb": 80.0,
        "temperature_c": 55.0,
        "power_w": 123.0,
        "power_limit_w": 700.0,
        "sm_clock_mhz": 1980.0,
        "mem_clock_mhz": 2619.0,
        "nvdec_util": 12.0,
        "nvenc_util": None,  # the fake has no encoder, like an H100
        "processes": 2.0,
    }
    assert nvml.gpu_utilization(5) is None  # no such GPU


def test_nvml_unsupported_counter_is_none(monkeypatch):
    fake_pynvml(monkeypatch, util_error=True)
    util = nvml.gpu_utilization(0)
    assert util["util_gpu"] is None and util["memory_used_gb"] == 3.0


def test_mps_running_from_proc(tmp_path):
    proc, pipe = tmp_path / "proc", tmp_path / "pipe"
    (proc / "self").mkdir(parents=True)
    (proc / "12").mkdir()
    (proc / "12" / "cmdline").write_bytes(b"python\0-m\0x\0")
    assert not mps_running(proc_root=proc, pipe_dir=str(pipe))
    (proc / "34").mkdir()
    (proc / "34" / "cmdline").write_bytes(b"/usr/bin/nvidia-cuda-mps-control\0-d\0")
    assert mps_running(proc_root=proc, pipe_dir=str(pipe))


def test_mps_running_from_pipe_dir(tmp_path, monkeypatch):
    empty = tmp_path / "proc"
    empty.mkdir()
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "mps"))
    assert not mps_running(proc_root=empty)
    (tmp_path / "mps").mkdir()
    (tmp_path / "mps" / "control").touch()
    assert mps_running(proc_root=empty)
    assert not mps_running(proc_root=tmp_path / "missing", pipe_dir=str(tmp_path / "nope"))


def test_mps_control_endpoint_must_be_live(tmp_path):
    """After ``quit`` the daemon's control socket or FIFO stays on disk: only a live endpoint counts."""
    import socket

    empty = tmp_path / "proc"
    empty.mkdir()
    sock_dir, fifo_dir = tmp_path / "sock", tmp_path / "fifo"
    sock_dir.mkdir()
    fifo_dir.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_dir / "control"))
    server.listen(1)
    assert mps_running(proc_root=empty, pipe_dir=str(sock_dir))
    server.close()  # the file stays, nobody listens
    assert (sock_dir / "control").exists() and not mps_running(proc_root=empty, pipe_dir=str(sock_dir))
    os.mkfifo(fifo_dir / "control")
    assert not mps_running(proc_root=empty, pipe_dir=str(fifo_dir))
    reader = os.open(fifo_dir / "control", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert mps_running(proc_root=empty, pipe_dir=str(fifo_dir))
    finally:
        os.close(reader)


def test_visible_devices_env(monkeypatch):
    assert nvml.visible_devices_env() is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert nvml.visible_devices_env() == "1,3"


def test_package_exports():
    import gpufleet.devices as pkg

    assert set(pkg.__all__) == {"Device", "discover", "select", "arch_for", "mps_running"}
    assert all(hasattr(pkg, name) for name in pkg.__all__)


# --- real GPU -------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_gpus():
    devices = discover()
    assert len(devices) == torch.cuda.device_count()
    for d in devices:
        assert isinstance(d, Device) and d.is_cuda and d.compute_capability is not None
        assert d.precision in ("bf16", "fp16", "fp32")
        assert d.memory_gb > 0
        if nvml.nvml_available() and "CUDA_VISIBLE_DEVICES" not in os.environ:
            assert d.physical_index is not None and d.uuid.startswith(("GPU-", "MIG-"))
    assert select("0")[0].index == 0
