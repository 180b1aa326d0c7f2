"""The settings file of ``gpufleet serve --config``: TOML that ``gpufleet tune`` writes and a user may edit.

::

    [serve]                 # any long flag of `gpufleet serve`, dashes as underscores
    model = "resnet50"
    max_batch_size = 128
    max_wait_ms = 2.0
    http_workers = 8

    [machine]               # where it was measured (tune writes it; serve warns when this machine differs)
    gpu = "NVIDIA H200"
    gpu_count = 1

Flags given on the command line win over the file; the file wins over environment variables.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gpufleet.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["machine_differences", "machine_facts", "read_config", "write_config"]


def machine_facts() -> dict[str, Any]:
    """What a measured configuration depends on: GPU model and count, driver, torch, CPU cores."""
    facts: dict[str, Any] = {"cores": os.cpu_count() or 1}
    try:
        import torch

        facts["torch"] = torch.__version__
        if torch.cuda.is_available():
            facts["gpu_count"] = torch.cuda.device_count()
            facts["gpu"] = torch.cuda.get_device_name(0)
        else:
            facts["gpu_count"] = 0
            facts["gpu"] = "none"
    except Exception:  # noqa: BLE001 - a broken CUDA install still gets a file, without the GPU facts
        pass
    from gpufleet.devices.nvml import driver_version

    driver = driver_version()
    if driver:
        facts["driver"] = driver
    return facts


def machine_differences(recorded: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> list[str]:
    """``"gpu: NVIDIA H200 (file) vs NVIDIA L4 (here)"`` for each fact that affects speed and differs."""
    now = machine_facts() if current is None else current
    out = []
    for key in ("gpu", "gpu_count", "driver", "torch", "cores"):
        if key in recorded and key in now and recorded[key] != now[key]:
            out.append(f"{key}: {recorded[key]} (file) vs {now[key]} (here)")
    return out


def read_config(path: str | os.PathLike[str], allowed: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(serve options, machine facts)`` from a ``--config`` file; ``ConfigError`` naming what to fix for a
    missing file, bad TOML or an option ``serve`` does not have (``allowed``: its option names)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    extra = set(data) - {"serve", "machine", "tune"}
    if extra:
        raise ConfigError(f"config file {p}: unknown section(s) {sorted(extra)}; expected [serve] (and [machine])")
    serve = data.get("serve", {})
    if not isinstance(serve, dict):
        raise ConfigError(f"config file {p}: [serve] must be a table")
    names = set(allowed)
    unknown = sorted(set(serve) - names)
    if unknown:
        raise ConfigError(f"config file {p}: unknown serve option(s) {unknown}; use the long flag names of "
                          "`gpufleet serve --help` with underscores (max_batch_size, http_workers, ...)")
    return dict(serve), dict(data.get("machine", {}))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def write_config(path: str | os.PathLike[str], serve: Mapping[str, Any], *, machine: Mapping[str, Any] | None = None,
                 tune: Mapping[str, Any] | None = None, comment: str = "") -> None:
    """Write a ``--config`` file: ``[serve]`` options (``None`` values left out), the ``[machine]`` facts and
    a ``[tune]`` record of how it was found; ``comment`` lines go on top."""
    lines = [f"# {line}" for line in comment.splitlines()]
    for name, table in (("serve", serve), ("machine", machine or {}), ("tune", tune or {})):
        rows = [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
        if rows:
            lines += ["", f"[{name}]", *rows]
    Path(path).write_text("\n".join(lines).lstrip("\n") + "\n")
