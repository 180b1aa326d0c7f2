"""The model contract and ready-made bases (PyTorch, ONNX) plus the embedded models (``zoo``)."""

from gpufleet.models.base import FunctionModel, Model, StackedBatch
from gpufleet.models.onnx_model import OnnxModel
from gpufleet.models.torch_model import TorchModel

__all__ = ["FunctionModel", "Model", "OnnxModel", "StackedBatch", "TorchModel"]
