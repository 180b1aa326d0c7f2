"""The embedded default models, by name; their weights ship inside PyPI wheels (no downloads).

>>> from gpufleet.models import zoo
>>> zoo.available()
['orientation', 'resnet18', 'resnet50', 'textdet']
>>> model = zoo.get("textdet", runtime="torch", input_size=640)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from gpufleet.errors import ConfigError
from gpufleet.models.zoo.classifier import ImageClassifier
from gpufleet.models.zoo.orientation import OrientationModel
from gpufleet.models.zoo.textdet import TextDetModel

__all__ = ["MODELS", "ImageClassifier", "OrientationModel", "TextDetModel", "available", "get"]

# orientation and textdet are real models (weights inside their wheels); resnet18/resnet50 are torchvision
# architectures with random weights for speed work (gpufleet bench, served JPEGs): JPEG or uint8 images in, top-1 out.
MODELS: dict[str, Callable[..., Any]] = {
    "orientation": OrientationModel,
    "textdet": TextDetModel,
    "resnet18": partial(ImageClassifier, "resnet18"),
    "resnet50": partial(ImageClassifier, "resnet50"),
}


def available() -> list[str]:
    """Names of the embedded models."""
    return sorted(MODELS)


def get(name: str, **kwargs: Any) -> Any:
    """A new instance of the embedded model ``name`` (``setup`` not yet called); ``ConfigError`` if unknown."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(available())}") from None
    return cls(**kwargs)
