"""ResNet-50 served as ``gpufleet serve resnet50`` serves it, with one thing changed, for A/B runs of W3
(``gpu_run.sh`` serve configs ``eager`` and ``side``):

- ``EagerResNet50``: without CUDA graphs (the eager module per batch);
- ``SideStreamResNet50``: ``launch`` decodes and stacks each batch on a CUDA stream of its own, so neither
  waits behind the previous batch on the compute stream (the default decodes with the compute stream current
  and stacks on the thread's default stream after it).

    gpufleet serve benchmarks/classifier_variants.py:SideStreamResNet50
"""

from __future__ import annotations

from typing import Any

import torch

from gpufleet.devices.device import Device
from gpufleet.models.zoo.classifier import ImageClassifier


class EagerResNet50(ImageClassifier):
    """``ImageClassifier("resnet50")`` with ``cuda_graphs=False``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cuda_graphs", False)
        super().__init__("resnet50", **kwargs)


class SideStreamResNet50(ImageClassifier):
    """``ImageClassifier("resnet50")`` whose launch decodes and stacks on a stream of its own."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("resnet50", **kwargs)

    def setup(self, device: Device) -> None:
        super().setup(device)
        if device.is_cuda:
            self._launch_decode_stream = torch.cuda.Stream(torch.device(device.torch))

    def launch(self, batch: list) -> Any:
        if self._launch_decode_stream is None:
            return super().launch(batch)
        with torch.cuda.stream(self._launch_decode_stream):  # the stack in TorchModel.launch goes here too
            return super().launch(batch)
