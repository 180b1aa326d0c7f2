"""ResNet-50 served as ``gpufleet serve resnet50`` serves it, but without CUDA graphs (the eager module per batch):
``gpufleet serve benchmarks/eager_classifier.py:EagerResNet50`` (``gpu_run.sh`` serve config ``eager``), to see
whether the GPU JPEG decode of the next batch overlaps an eager model better than a replayed graph."""

from __future__ import annotations

from typing import Any

from gpufleet.models.zoo.classifier import ImageClassifier


class EagerResNet50(ImageClassifier):
    """``ImageClassifier("resnet50")`` with ``cuda_graphs=False``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cuda_graphs", False)
        super().__init__("resnet50", **kwargs)
