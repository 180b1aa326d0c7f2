"""The embedded default models, by name; their weights ship inside PyPI wheels (no downloads).

>>> from gpufleet.models import zoo
>>> zoo.available()
['orientation', 'textdet']
>>> model = zoo.get("textdet", runtime="torch", input_size=640)
"""

from __future__ import annotations

from typing import Any

from gpufleet.errors import ConfigError
from gpufleet.models.zoo.orientation import OrientationModel
from gpufleet.models.zoo.textdet import TextDetModel

__all__ = ["MODELS", "OrientationModel", "TextDetModel", "available", "get"]

MODELS: dict[str, type] = {"orientation": OrientationModel, "textdet": TextDetModel}


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
