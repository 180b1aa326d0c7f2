"""The embedded default models; their weights ship inside PyPI wheels (no downloads).

They are resolved by name (``"orientation"``, ``"textdet"``, ``"resnet18"``, ``"resnet50"``) in one place,
:func:`gpufleet.models.resolve.resolve_model`, which every entry point uses:

>>> from gpufleet.models.resolve import resolve_model
>>> model = resolve_model("textdet", runtime="torch", input_hw=(640, 640))
"""

from __future__ import annotations

from gpufleet.models.zoo.classifier import ImageClassifier
from gpufleet.models.zoo.orientation import OrientationModel
from gpufleet.models.zoo.textdet import TextDetModel

__all__ = ["ImageClassifier", "OrientationModel", "TextDetModel"]
