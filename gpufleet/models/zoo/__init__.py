"""The embedded default models; their weights ship inside PyPI wheels (no downloads).

They are resolved by name (``"orientation"``, ``"textdet"``, ``"resnet18"``, ``"resnet50"``) in one place,
:func:`gpufleet.models.resolve.resolve_model`, which every entry point uses:

>>> from gpufleet.models.resolve import resolve_model
>>> model = resolve_model("textdet", runtime="torch", input_hw=(640, 640))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpufleet.models.zoo.orientation import OrientationModel
from gpufleet.models.zoo.textdet import TextDetModel

if TYPE_CHECKING:
    from gpufleet.models.zoo.classifier import ImageClassifier

__all__ = ["ImageClassifier", "OrientationModel", "TextDetModel"]


def __getattr__(name: str) -> Any:
    if name == "ImageClassifier":  # imports torch: only when asked for (see gpufleet.models)
        from gpufleet.models.zoo.classifier import ImageClassifier

        return ImageClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
