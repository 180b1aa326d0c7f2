"""ResNet-50 served as ``gpufleet serve resnet50`` serves it, with one thing changed, for A/B runs of W3
(``gpu_run.sh`` serve configs ``eager``, ``side`` and ``pad``):

- ``EagerResNet50``: without CUDA graphs (the eager module per batch);
- ``SideStreamResNet50``: ``launch`` decodes and stacks each batch on a CUDA stream of its own, so neither
  waits behind the previous batch on the compute stream (the default decodes with the compute stream current
  and stacks on the thread's default stream after it);
- ``PaddedDecodeResNet50``: every decode call gets the same number of JPEGs (the batch size; the first JPEG
  repeated), in case the decoder's set-up for a batch of another size is what costs (the server's batches vary).

    gpufleet serve benchmarks/classifier_variants.py:SideStreamResNet50
"""

from __future__ import annotations

from typing import Any

import torch

from gpufleet.devices.device import Device
from gpufleet.models.zoo.classifier import ImageClassifier


class _ResNet50(ImageClassifier):
    """``ImageClassifier("resnet50")``, as ``gpufleet serve resnet50`` makes it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("resnet50", **kwargs)


class EagerResNet50(_ResNet50):
    """ResNet-50 with ``cuda_graphs=False``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cuda_graphs", False)
        super().__init__(**kwargs)


class SideStreamResNet50(_ResNet50):
    """ResNet-50 whose launch decodes and stacks on a stream of its own."""

    def setup(self, device: Device) -> None:
        super().setup(device)
        if device.is_cuda:
            self._launch_decode_stream = torch.cuda.Stream(torch.device(device.torch))

    def launch(self, batch: list) -> Any:
        if self._launch_decode_stream is None:
            return super().launch(batch)
        with torch.cuda.stream(self._launch_decode_stream):  # the stack in TorchModel.launch goes here too
            return super().launch(batch)


class PaddedDecodeResNet50(_ResNet50):
    """ResNet-50 that decodes each batch's JPEGs in calls of the batch size."""

    def _decode_gpu(self, batch: list, stream: torch.cuda.Stream) -> list:
        encoded = [x for x in batch if isinstance(x, torch.Tensor) and x.dim() == 1]
        pad = (self.max_batch_size or len(batch)) - len(batch)
        if not encoded or pad <= 0:
            return super()._decode_gpu(batch, stream)
        return super()._decode_gpu(batch + [encoded[0]] * pad, stream)[: len(batch)]
