"""Run one ONNX file on one device, in ONNX Runtime or in PyTorch (after onnx2torch conversion).

Both zoo models share this: ``Runner(path, runtime, device)(x) -> y`` with numpy float32 in and out.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from gpufleet.devices.device import Device
from gpufleet.errors import ConfigError

__all__ = ["RUNTIMES", "Runner", "cpu_device"]

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnx", "torch")


def cpu_device() -> Device:
    """The device used when ``setup`` gets none (notebooks, scripts)."""
    return Device(index=0, kind="cpu", name="CPU")


def resolve_runtime(runtime: str, device: Device) -> str:
    """``auto``: ONNX Runtime on CPU devices or where it has a CUDA provider, else PyTorch (GPU, fp16/bf16)."""
    if runtime != "auto":
        return runtime
    if not device.is_cuda:
        return "onnx"
    import onnxruntime as ort

    return "onnx" if "CUDAExecutionProvider" in ort.get_available_providers() else "torch"


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of ``RUNTIMES``, else ``ConfigError``."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    return runtime


class Runner:
    """One model copy on one device; call it with a float32 ``[N, ...]`` array, get the first output back.

    ``runtime="onnx"`` uses ONNX Runtime (CUDA provider when the device is CUDA and the provider exists,
    CPU otherwise); ``runtime="torch"`` runs the onnx2torch conversion on ``device.torch`` under
    ``inference_mode``, with fp16/bf16 autocast on CUDA devices whose precision says so.
    """

    def __init__(self, path: str | Path, runtime: str, device: Device | None = None) -> None:
        self.device = device or cpu_device()
        self.runtime = runtime = resolve_runtime(check_runtime(runtime), self.device)
        self.path = Path(path)
        self._session: Any = None
        self._module: Any = None
        if runtime == "onnx":
            self._session = self._make_session()
            self._input = self._session.get_inputs()[0].name
        else:
            from gpufleet.models.zoo.convert import load_onnx_as_torch

            self._module = load_onnx_as_torch(self.path).to(self.device.torch)

    def _make_session(self) -> Any:
        import onnxruntime as ort

        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device.is_cuda:
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index}))
            else:
                log.warning("onnxruntime has no CUDAExecutionProvider; %s runs on the CPU", self.path.name)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(str(self.path), sess_options=options, providers=providers)

    @property
    def metadata(self) -> dict[str, str]:
        """The ONNX file's custom metadata (ONNX runtime only; empty for torch)."""
        return dict(self._session.get_modelmeta().custom_metadata_map) if self._session is not None else {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run a float32 batch ``x``; returns the model's first output as float32 numpy."""
        if self._session is not None:
            return self._session.run(None, {self._input: x})[0]
        import torch

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.device.precision)
        autocast = torch.autocast("cuda", dtype=dtype) if self.device.is_cuda and dtype else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            inp = torch.from_numpy(np.ascontiguousarray(x)).to(self.device.torch, non_blocking=True)
            out = self._module(inp)
            if isinstance(out, (list, tuple)):
                out = out[0]
            return out.float().cpu().numpy()
