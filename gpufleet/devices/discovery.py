"""Find the devices this process can use (CUDA GPUs, else simulated CPU devices) and pick a subset.

``Device.index`` is the torch index (``cuda:index``, after ``CUDA_VISIBLE_DEVICES``); ``physical_index`` is the
nvidia-smi index, found by matching UUIDs through NVML, else by reading ``CUDA_VISIBLE_DEVICES``.

>>> [d.label for d in select("0,1", cpu_devices=2)]
['cpu:0', 'cpu:1']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from gpufleet.devices import nvml
from gpufleet.devices.arch import arch_for
from gpufleet.devices.device import Device
from gpufleet.errors import ConfigError

__all__ = ["cuda_env_defaults", "discover", "remap_visible", "select"]

log = logging.getLogger(__name__)

CPU_DEVICES_ENV = "GPUFLEET_CPU_DEVICES"
GPU_IDS_ENVS = ("GPU_IDS", "GPUFLEET_GPUS")


def remap_visible(
    visible: str | None,
    physical_count: int | None,
    uuids: Sequence[str] = (),
    mig_parents: Mapping[str, int] | None = None,
) -> list[int]:
    """Physical index of each torch index under ``CUDA_VISIBLE_DEVICES=visible`` (pure; no CUDA needed).

    Follows CUDA's rules: tokens are integers or (unique prefixes of) ``GPU-``/``MIG-`` UUIDs, and parsing stops
    at the first token that is invalid, out of range, unresolvable or repeated. ``physical_count=None`` means
    unknown (integers are not range-checked). A MIG device maps to its parent GPU.

    >>> remap_visible("1,3", 4)
    [1, 3]
    """
    if visible is None:
        return list(range(physical_count or 0))
    out: list[int] = []
    for raw in visible.split(","):
        token = raw.strip()
        idx = _resolve_token(token, physical_count, uuids, mig_parents or {})
        if idx is None or idx in out:
            break
        out.append(idx)
    return out


def _resolve_token(token: str, count: int | None, uuids: Sequence[str], migs: Mapping[str, int]) -> int | None:
    """Physical index one ``CUDA_VISIBLE_DEVICES`` token names, or None."""
    if not token:
        return None
    try:
        idx = int(token)
    except ValueError:
        pass
    else:
        return idx if idx >= 0 and (count is None or idx < count) else None
    low = token.lower()
    if low.startswith("mig-gpu-"):  # legacy form MIG-GPU-<parent uuid>/<gi>/<ci>
        return _unique_prefix(low[len("mig-") :].split("/", 1)[0], list(uuids))
    if low.startswith("mig-"):
        names = list(migs)
        hit = _unique_prefix(low, names)
        return None if hit is None else migs[names[hit]]
    if not low.startswith("gpu-"):
        low = "gpu-" + low
    return _unique_prefix(low, list(uuids))


def _unique_prefix(prefix: str, names: list[str]) -> int | None:
    """Position of the single name that starts with ``prefix`` (case-insensitive), else None."""
    hits = [i for i, name in enumerate(names) if name.lower().startswith(prefix)]
    return hits[0] if len(hits) == 1 else None


def _normalise_uuid(value: object) -> str:
    """torch reports ``"8932f937-…"``; NVML and nvidia-smi say ``"GPU-8932f937-…"``."""
    text = str(value or "").strip()
    if not text or text.upper().startswith(("GPU-", "MIG-")):
        return text
    return "GPU-" + text


def _cpu_count_default() -> int:
    """``$GPUFLEET_CPU_DEVICES`` or 1."""
    raw = os.environ.get(CPU_DEVICES_ENV, "").strip()
    if not raw:
        return 1
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{CPU_DEVICES_ENV}={raw!r} is not an integer; expected a count >= 1") from None


def _host_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 0.0


def cpu_devices_list(count: int | None = None) -> list[Device]:
    """``count`` simulated CPU devices (default ``$GPUFLEET_CPU_DEVICES`` or 1); they share host memory."""
    n = _cpu_count_default() if count is None else count
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"cpu_devices={n!r} is invalid; expected an integer >= 1")
    mem = round(_host_memory_gb(), 1)
    return [
        Device(
            index=i,
            kind="cpu",
            name=f"CPU (simulated device {i})",
            uuid=f"cpu-{i}",
            memory_gb=mem,
            arch="cpu",
            precision="fp32",
        )
        for i in range(n)
    ]


# Hardware work queues per CUDA context (CUDA's default is 8). With 8, a JPEG decode on a side stream beside
# ResNet-50 replayed as a CUDA graph ran at a quarter of its own speed (7,301 of 29,542 img/s on one H100,
# 2026-12-07, benchmarks/decode_overlap.py): the graph's kernels took the queues the decoder's streams map to.
# With 32 it ran at 27,740 and decoding the next batch while the model ran cost the model 1.5% instead of 12%.
CUDA_CONNECTIONS = "32"


def cuda_env_defaults() -> None:
    """Set CUDA's environment defaults that gpufleet relies on, unless the user set them: read when a process
    creates its CUDA context, so call it before (device discovery does)."""
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", CUDA_CONNECTIONS)


def _cuda_devices() -> list[Device]:
    """The CUDA devices torch sees, enriched with NVML uuids and physical indices; [] without CUDA."""
    cuda_env_defaults()
    import torch

    try:
        if not torch.cuda.is_available():
            return []
        count = torch.cuda.device_count()
        props = [torch.cuda.get_device_properties(i) for i in range(count)]
    except Exception as exc:  # broken driver / CUDA init errors: fall back to CPU rather than crash
        log.warning("CUDA present but unusable (%s); using CPU devices", exc)
        return []
    nv_uuids = nvml.gpu_uuids() or []
    torch_uuids = [_normalise_uuid(getattr(p, "uuid", "")) for p in props]
    visible = nvml.visible_devices_env()
    fallback: list[int] | None = None
    devices = []
    for i, p in enumerate(props):
        uuid = torch_uuids[i]
        # Matching UUIDs is exact; index arithmetic on CUDA_VISIBLE_DEVICES is only right when CUDA enumerates
        # in PCI order (CUDA_DEVICE_ORDER=PCI_BUS_ID or identical GPUs), so it is the fallback.
        physical = nv_uuids.index(uuid) if uuid and uuid in nv_uuids else None
        if physical is None:
            if fallback is None:
                migs = nvml.mig_parents() if visible and "mig-" in visible.lower() else {}
                fallback = remap_visible(visible, nvml.device_count(), nv_uuids, migs)
            physical = fallback[i] if i < len(fallback) else None
        if not uuid and physical is not None and physical < len(nv_uuids):
            uuid = nv_uuids[physical]
        cc = (int(p.major), int(p.minor))
        info = arch_for(cc)
        devices.append(
            Device(
                index=i,
                kind="cuda",
                name=str(p.name),
                uuid=uuid,
                memory_gb=round(p.total_memory / 1e9, 1),
                compute_capability=cc,
                arch=info.name,
                precision=info.precision,
                tf32=info.tf32,
                physical_index=physical,
            )
        )
    return devices


def discover(*, cpu_devices: int | None = None) -> list[Device]:
    """All usable devices: CUDA GPUs, or ``cpu_devices`` simulated CPU devices when there is no GPU.

    Passing ``cpu_devices`` explicitly returns CPU devices even on a GPU machine (tests, dry runs).
    """
    if cpu_devices is not None:
        return cpu_devices_list(cpu_devices)
    gpus = _cuda_devices()
    if gpus:
        return gpus
    devices = cpu_devices_list()
    log.info("no CUDA device found; using %d simulated CPU device(s)", len(devices))
    return devices


def _parse_indices(devices: str | int | Sequence[int]) -> list[int]:
    """``"0,2"`` / ``2`` / ``[0, 2]`` → ``[0, 2]``; ConfigError on anything else."""
    if isinstance(devices, str):
        tokens = [t.strip() for t in devices.split(",")]
        if any(not t for t in tokens):
            raise ConfigError(f"devices={devices!r} has an empty entry; expected e.g. '0,2', 'all' or 'cpu'")
        out = []
        for t in tokens:
            t = t.removeprefix("cuda:").removeprefix("cpu:")
            if not t.isdigit():
                raise ConfigError(f"device {t!r} in {devices!r} is not an index; expected e.g. '0,2', 'all' or 'cpu'")
            out.append(int(t))
        return out
    items = [devices] if isinstance(devices, int) else list(devices)
    for x in items:
        if isinstance(x, bool) or not isinstance(x, int) or x < 0:
            raise ConfigError(f"device {x!r} is not an index; expected non-negative integers such as [0, 2]")
    return items


def select(devices: str | int | Sequence[int] | None = None, *, cpu_devices: int | None = None) -> list[Device]:
    """The devices to run on, in the order asked for.

    ``None`` reads ``$GPU_IDS`` (or ``$GPUFLEET_GPUS``), else takes all; ``"all"``/``"auto"`` take all;
    ``"cpu"`` takes ``cpu_devices`` CPU devices; ``"0,2"`` or ``[0, 2]`` take those indices (torch indices, after
    ``CUDA_VISIBLE_DEVICES``). Unknown, repeated or empty selections raise ``ConfigError``.
    """
    source = "devices"
    if devices is None:
        for env in GPU_IDS_ENVS:
            value = os.environ.get(env, "").strip()
            if value:
                devices, source = value, f"{env}={value}"
                break
        else:
            devices = "all"
    elif isinstance(devices, str) and getattr(devices, "env", None):  # a config.EnvValue: name the variable
        source = f"{devices.env}={devices}"  # type: ignore[attr-defined]
    if isinstance(devices, str):
        word = devices.strip().lower()
        if word in ("all", "auto"):
            return discover(cpu_devices=cpu_devices)
        if word == "cpu":
            return cpu_devices_list(cpu_devices)
        if not word:
            raise ConfigError(f"{source} is empty; expected e.g. '0,2', 'all' or 'cpu'")
    try:
        wanted = _parse_indices(devices)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if not wanted:
        raise ConfigError(f"{source} selects no device; expected e.g. '0,2', 'all' or 'cpu'")
    dupes = sorted({i for i in wanted if wanted.count(i) > 1})
    if dupes:
        raise ConfigError(f"{source} lists device {', '.join(map(str, dupes))} more than once: {devices!r}")
    found = discover(cpu_devices=cpu_devices)
    by_index = {d.index: d for d in found}
    missing = [i for i in wanted if i not in by_index]
    if missing:
        kind = found[0].kind if found else "cuda"
        available = ", ".join(str(d.index) for d in found) or "none"
        raise ConfigError(
            f"{source}: device index {', '.join(map(str, missing))} does not exist; available {kind} "
            f"indices: {available}"
        )
    return [by_index[i] for i in wanted]
