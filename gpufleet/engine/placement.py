"""Putting a process worker on its device: the model as bytes the child can load, the child's environment
(one visible GPU), and the check that the child's CUDA context really is on the intended GPU.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import os
import pickle
import sys
from typing import Any

from gpufleet.devices.device import Device
from gpufleet.engine.messages import Hello
from gpufleet.errors import ConfigError, DeviceError

__all__ = ["load_model_blob", "model_blob", "pin_env", "verify_placement"]


def _file_modules(model: Any) -> list[tuple[str, str]]:
    """(module name, file) of the model's module when a fresh interpreter cannot import it by name — a model
    loaded from ``path/to/file.py:Class`` (``gpufleet serve``): the child loads that file under the same name
    before it unpickles the model."""
    owner = model if inspect.isclass(model) or inspect.isfunction(model) else type(model)
    name = getattr(owner, "__module__", None) or ""
    mod = sys.modules.get(name)
    path = getattr(mod, "__file__", None)
    if not name or name == "__main__" or mod is None or not path:
        return []
    if importlib.machinery.PathFinder.find_spec(name.split(".")[0]) is not None:
        return []  # importable from sys.path: pickle's by-reference lookup works in the child
    return [(name, os.path.abspath(path))]


def load_model_blob(blob: bytes) -> Any:
    """The model of :func:`model_blob`, in the child: loads file-only modules first, then unpickles."""
    files, payload = pickle.loads(blob)
    for name, path in files:
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ConfigError(f"cannot load the model's module {name} from {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    return pickle.loads(payload)


def model_blob(model: Any) -> bytes:
    """``model`` pickled for a spawned child: a class or module-level function travels by reference (the
    child imports it, or loads its file), an instance by value, an embedded model by name. ``ConfigError``
    for what cannot."""
    try:
        blob = pickle.dumps((_file_modules(model), pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)),
                            protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # PicklingError, AttributeError ("Can't pickle local object"), TypeError
        what = "lambda" if getattr(model, "__name__", "") == "<lambda>" else type(model).__name__
        if inspect.isfunction(model) or inspect.isclass(model):
            what = f"{model.__qualname__} ({what})" if what != "lambda" else "a lambda"
        raise ConfigError(
            f"backend='process' needs a model a child process can import, and {what} cannot be pickled "
            f"({type(exc).__name__}: {exc}). Pass a model class, an embedded model name, a module-level function "
            "or a picklable model instance; lambdas and functions or classes defined inside functions only work "
            "with backend='thread'."
        ) from exc
    return blob


GPU_CHILD_THREADS = 4  # OpenMP/MKL threads of a process worker on a GPU (unless OMP_NUM_THREADS is set)


def pin_env(device: Device, threads: int | None = None) -> dict[str, str]:
    """Environment for the child of ``device``: ``CUDA_VISIBLE_DEVICES`` = that GPU's uuid (or physical index),
    so it is ``cuda:0`` in the child; CPU devices see no GPU. Each child gets ``threads`` OpenMP threads (at most
    ``GPU_CHILD_THREADS`` on a GPU) unless ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` are set."""
    env: dict[str, str] = {}
    if device.is_cuda:
        if device.uuid.upper().startswith(("GPU-", "MIG-")):
            env["CUDA_VISIBLE_DEVICES"] = device.uuid
        elif device.physical_index is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(device.physical_index)
        # A GPU worker's CPU work is copying: a few threads. Every child with an OpenMP team as large as the
        # machine oversubscribes the cores and stalls each parallel region (seen on 2x H200).
        threads = min(threads, GPU_CHILD_THREADS) if threads else GPU_CHILD_THREADS
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            if name not in os.environ:
                env[name] = str(threads)
    return env


def verify_placement(worker: str, device: Device, hello: Hello, env: dict[str, str]) -> None:
    """Raise ``DeviceError`` unless the child's CUDA context is on ``device`` (by uuid, else by name)."""
    if not device.is_cuda:
        return
    expected = 0 if env.get("CUDA_VISIBLE_DEVICES") else device.index
    problems = []
    if hello.kind != "cuda":
        problems.append("the child initialised no CUDA device")
    if hello.current_device != expected:
        problems.append(f"its current device is cuda:{hello.current_device}, expected cuda:{expected}")
    want, got = device.uuid.lower(), hello.uuid.lower()
    if want and got and want[:4] == got[:4]:
        if want != got:
            problems.append(f"its GPU is {hello.name} {hello.uuid}")
    elif device.name and hello.name and device.name != hello.name:
        problems.append(f"its GPU is {hello.name}")
    if problems:
        raise DeviceError(
            f"{worker}: the worker process is not on the intended GPU {device.label} ({device.name} "
            f"{device.uuid or '?'}): {'; '.join(problems)} (CUDA_VISIBLE_DEVICES={hello.visible!r} in the child)"
        )


def weights_device(model: Any) -> str | None:
    """Where ``model`` keeps its weights: the device of the first parameter of its torch module (a
    ``TorchModel``'s ``module``, else the first ``nn.Module`` attribute), e.g. ``"cuda:1"``; None when it
    has none. Plain tensor attributes are not looked at: small CPU-side tables are legitimate."""
    import torch

    seen: list[Any] = [getattr(model, "module", None), *vars(model).values()] if hasattr(model, "__dict__") else []
    for value in seen:
        if isinstance(value, torch.nn.Module):
            for p in value.parameters():
                return str(p.device)
    return None


def check_thread_placement(workers: list[Any]) -> None:
    """Refuse a pool whose workers' weights are not on their own device (the classic "every copy silently
    landed on cuda:0"): ``DeviceError`` naming the worker, where it should be and where it is."""
    for w in workers:
        where = getattr(w, "weights_on", None)
        if where is None:
            continue
        want = w.device.torch
        if where != want and not (want == "cpu" and where.startswith("cpu")):
            raise DeviceError(f"{w.name} is meant for {want} but its model weights are on {where}: load them on "
                              "device.torch in setup(device) (e.g. module.to(device.torch))")
