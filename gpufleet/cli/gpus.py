"""``gpufleet gpus``: list the devices gpufleet would use, as a table or as JSON."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from typing import Any

from gpufleet.devices import nvml
from gpufleet.devices.device import Device
from gpufleet.devices.discovery import discover
from gpufleet.errors import GpufleetError

__all__ = ["gpus", "ray_gpus"]

log = logging.getLogger(__name__)


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _remap_note(devices: list[Device], visible: str | None) -> str | None:
    """``"CUDA_VISIBLE_DEVICES=1,3: cuda:0 is GPU 1, cuda:1 is GPU 3"``, or None when nothing is remapped."""
    cuda = [d for d in devices if d.is_cuda]
    if visible is None or not cuda:
        return None
    parts = [f"{d.torch} is GPU {'?' if d.physical_index is None else d.physical_index}" for d in cuda]
    return f"CUDA_VISIBLE_DEVICES={visible}: " + ", ".join(parts)


def _device_json(d: Device, util: dict[str, float | None] | None) -> dict[str, Any]:
    row = dataclasses.asdict(d)
    row["compute_capability"] = list(d.compute_capability) if d.compute_capability else None
    row["torch"] = d.torch
    row["label"] = d.label
    row["utilization"] = util
    return row


def _versions() -> tuple[str | None, str | None]:
    try:
        import torch

        return str(torch.__version__), torch.version.cuda
    except Exception:  # torch is a hard dependency, but the listing must not die on a broken install
        return None, None


def _print_table(
    devices: list[Device], utils: list[dict[str, float | None] | None], note: str | None, mps: bool
) -> None:
    from rich.console import Console
    from rich.table import Table

    # Not a terminal (pipes, captured output): use a wide console so columns are not ellipsised.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    show_physical = any(d.is_cuda and d.physical_index != d.index for d in devices)
    table = Table(title="gpufleet devices")
    table.add_column("device")
    if show_physical:
        table.add_column("GPU", justify="right")
    for name, justify in (
        ("name", "left"),
        ("memory GB", "right"),
        ("cc", "right"),
        ("arch", "left"),
        ("precision", "left"),
        ("util %", "right"),
        ("mem used GB", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for d, util in zip(devices, utils, strict=True):
        util = util or {}
        cc = f"{d.compute_capability[0]}.{d.compute_capability[1]}" if d.compute_capability else "-"
        precision = d.precision + ("+tf32" if d.tf32 else "")
        row = [d.label]
        if show_physical:
            row.append("-" if d.physical_index is None else str(d.physical_index))
        row += [
            d.name,
            f"{d.memory_gb:.1f}",
            cc,
            d.arch,
            precision,
            _fmt(util.get("util_gpu"), ".0f"),
            _fmt(util.get("memory_used_gb"), ".1f"),
        ]
        table.add_row(*row)
    console.print(table)
    if note:
        console.print(note, markup=False, highlight=False)
    console.print(f"MPS daemon: {'running' if mps else 'not running'}", markup=False, highlight=False)


def _simulated_note(devices: list[Device]) -> str | None:
    """Why the table shows CPUs: no GPU was found (or none is used), so these devices are simulated."""
    if any(d.is_cuda for d in devices):
        return None
    why = "no GPU found" if _gpu_count() == 0 else "GPUs not used (--cpu-devices)"
    return (f"{why}: these {len(devices)} devices are simulated on the CPU (everything runs, slower); "
            f"--cpu-devices N sets how many")


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken torch/CUDA install: no usable GPU
        return 0


def gpus(json_output: bool = False, cpu_devices: int | None = None) -> int:
    """Print the devices gpufleet sees (table, or JSON with ``json_output``); returns the exit code."""
    try:
        devices = discover(cpu_devices=cpu_devices)
    except GpufleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    visible = nvml.visible_devices_env()
    utils = [nvml.gpu_utilization(d.physical_index) if d.is_cuda else None for d in devices]
    mps = nvml.mps_running()
    if json_output:
        torch_version, cuda_version = _versions()
        doc = {
            "devices": [_device_json(d, u) for d, u in zip(devices, utils, strict=True)],
            "simulated": not any(d.is_cuda for d in devices),
            "cuda_visible_devices": visible,
            "mps_running": mps,
            "torch": torch_version,
            "cuda": cuda_version,
        }
        print(json.dumps(doc, indent=2))
        return 0
    notes = [n for n in (_remap_note(devices, visible), _simulated_note(devices)) if n]
    _print_table(devices, utils, "\n".join(notes) or None, mps)
    return 0


def ray_gpus(json_output: bool = False, address: str | None = "auto") -> int:
    """Print the GPUs of the Ray cluster at ``address``, node by node (``gpufleet gpus --ray``)."""
    from gpufleet.ray.cluster import connect, gpu_nodes

    try:
        ray = connect(address)
        nodes = gpu_nodes(ray)
    except GpufleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if json_output:
        print(json.dumps({"nodes": [dataclasses.asdict(n) for n in nodes],
                          "gpus": sum(n.gpus for n in nodes)}, indent=2))
        return 0
    print(f"{'node':14} {'address':16} {'hostname':20} {'GPUs':>5} {'type':10} {'CPUs':>5}")
    for n in nodes:
        print(f"{n.node_id[:12]:14} {n.address:16} {n.hostname[:20]:20} {n.gpus:>5g} {n.gpu_type or '-':10} "
              f"{n.cpus:>5g}")
    print(f"{len(nodes)} node(s), {sum(n.gpus for n in nodes):g} GPU(s): Pool(backend='ray') puts one worker on each")
    return 0
