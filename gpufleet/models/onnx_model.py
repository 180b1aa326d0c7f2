"""``OnnxModel``: an ONNX file served with ONNX Runtime (its CUDA provider when present)."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from gpufleet.devices.device import Device
from gpufleet.errors import ConfigError, InputError
from gpufleet.models.base import Model

__all__ = ["OnnxModel"]

log = logging.getLogger(__name__)


class OnnxModel(Model):
    """Run ``path`` with ONNX Runtime: items are arrays of one shape, stacked along a new first axis; each
    item's output is row ``i`` of the model's output ``output_index``.

    >>> m = OnnxModel("model.onnx")  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, *, providers: list[str] | None = None, output_index: int = 0,
                 intra_op_threads: int | None = None) -> None:
        self.path = os.fspath(path)
        self.providers = providers
        self.output_index = output_index
        self.intra_op_threads = intra_op_threads
        self.session: Any = None

    def setup(self, device: Device) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ConfigError("ONNX models need onnxruntime: pip install 'gpufleet[onnx]'") from exc
        if not os.path.exists(self.path):
            raise ConfigError(f"ONNX file not found: {self.path}")
        available = ort.get_available_providers()
        providers: list[Any] = list(self.providers or [])
        if not providers:
            if device.is_cuda and "CUDAExecutionProvider" in available:
                providers = [("CUDAExecutionProvider", {"device_id": device.index}), "CPUExecutionProvider"]
            else:
                if device.is_cuda:
                    log.warning("onnxruntime has no CUDA provider here: %s runs on the CPU", self.path)
                providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        if self.intra_op_threads:
            opts.intra_op_num_threads = self.intra_op_threads
        self.session = ort.InferenceSession(self.path, opts, providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name, self.input_shape = inp.name, inp.shape
        self.device = device

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output of the model for one stacked batch."""
        return self.session.run(None, {self.input_name: x})

    def predict(self, batch: list) -> list:
        try:
            x = np.stack([np.asarray(a, dtype=np.float32) for a in batch])
        except ValueError as exc:
            raise InputError(f"items of one batch must share a shape: {exc}") from exc
        return list(self.run(x)[self.output_index])
