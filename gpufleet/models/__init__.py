"""The model contract and ready-made bases (PyTorch, ONNX) plus the embedded models (``zoo``).

``TorchModel`` is imported on first use: a process that serves other models (the front ends of a plain Python
model, a load generator, the CLI's help) starts without importing torch (~2 s of CPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpufleet.models.base import FunctionModel, Model, StackedBatch
from gpufleet.models.onnx_model import OnnxModel

if TYPE_CHECKING:
    from gpufleet.models.torch_model import TorchModel

__all__ = ["FunctionModel", "Model", "OnnxModel", "StackedBatch", "TorchModel"]


def __getattr__(name: str) -> Any:
    if name == "TorchModel":
        from gpufleet.models.torch_model import TorchModel

        return TorchModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
