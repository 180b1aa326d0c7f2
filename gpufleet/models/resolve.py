"""The one model resolver: every entry point (``Pool("name")``, ``gpufleet serve``, ``gpufleet video --model``,
``gpufleet bench``, a process worker's child) turns a model spec into a model here.

A spec is one of:

- an embedded model name: ``orientation``, ``textdet`` (real models, weights inside their wheels),
  ``resnet18``, ``resnet50`` (torchvision architectures, random weights, for speed work); any other
  torchvision classifier name (``mobilenet_v3_large``) works like the two ResNets;
- ``package.module:attr`` (the current folder is put on ``sys.path`` first, as uvicorn does) or
  ``path/to/file.py:attr``; ``attr`` may be dotted;
- a ``.onnx`` file (served by :class:`~gpufleet.models.onnx_model.OnnxModel`);
- a model class, a model instance or a function ``f(batch) -> list``: returned as they are.

Options are what the entry points know (``runtime``, ``image_size``, ``input_hw``, CUDA graphs ...); each
embedded model is given only the options it takes, the rest are ignored, so every entry point can pass its
flags to every model. ``None`` means "not given". Specs that are not embedded names ignore options.

>>> model = resolve_model("resnet18", image_size=64, runtime="auto")
>>> type(model).__name__
'ImageClassifier'
>>> make = model_factory("orientation")  # one fresh instance per worker
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpufleet.errors import ConfigError
from gpufleet.models.base import FunctionModel
from gpufleet.models.onnx_model import OnnxModel
from gpufleet.models.zoo.orientation import OrientationModel
from gpufleet.models.zoo.runner import check_runtime
from gpufleet.models.zoo.textdet import TextDetModel

if TYPE_CHECKING:
    from gpufleet.models.zoo.classifier import ImageClassifier

__all__ = ["EMBEDDED", "OPTIONS", "embedded_names", "frontend_model", "model_factory", "model_name",
           "resolve_model"]

log = logging.getLogger(__name__)

# Options of TorchModel that the classifiers pass on as they are.
_TORCH_OPTIONS = frozenset({"precision", "cuda_graphs", "compile", "batch_buckets", "warmup_batch_sizes",
                            "example_shape", "example_dtype", "channels_last", "weights"})
OPTIONS = frozenset({"runtime", "image_size", "input_hw"}) | _TORCH_OPTIONS
"""Every option name :func:`resolve_model` knows; any other is a ``ConfigError`` (a typo, not a model's)."""


def _orientation(runtime: str = "auto") -> OrientationModel:
    return OrientationModel(runtime=runtime)


def _textdet(runtime: str = "auto", image_size: int | None = None,
             input_hw: tuple[int, int] | None = None) -> TextDetModel:
    if input_hw is None and image_size is not None:
        side = max(32, math.ceil(image_size / 32) * 32)  # the detector's stride
        input_hw = (side, side)
    return TextDetModel(runtime=runtime, input_hw=input_hw)


def _classifier(arch: str) -> Callable[..., ImageClassifier]:
    def build(runtime: str = "auto", image_size: int | None = None, **torch_options: Any) -> ImageClassifier:
        if runtime not in ("auto", "torch"):
            raise ConfigError(f"{arch} runs in PyTorch only: runtime must be auto or torch, got {runtime!r}")
        from gpufleet.models.zoo.classifier import ImageClassifier  # torch: imported when a classifier is made

        return ImageClassifier(arch, image_size=image_size or 224, **torch_options)

    build.__name__ = f"_{arch}"
    build.arch = arch  # type: ignore[attr-defined]  # frontend_model: a front end of it needs no torch
    return build


# name -> (builder, the options it takes)
EMBEDDED: dict[str, tuple[Callable[..., Any], frozenset[str]]] = {
    "orientation": (_orientation, frozenset({"runtime"})),  # its input is fixed at 224x224
    "textdet": (_textdet, frozenset({"runtime", "image_size", "input_hw"})),
    "resnet18": (_classifier("resnet18"), frozenset({"runtime", "image_size"}) | _TORCH_OPTIONS),
    "resnet50": (_classifier("resnet50"), frozenset({"runtime", "image_size"}) | _TORCH_OPTIONS),
}


def embedded_names() -> list[str]:
    """The embedded model names, sorted."""
    return sorted(EMBEDDED)


def _torchvision_classifier(name: str) -> bool:
    try:
        import torchvision.models as tvm
    except ImportError:
        return False
    return name in tvm.list_models(module=tvm)


def _unknown(spec: str) -> ConfigError:
    return ConfigError(f"unknown model {spec!r}: embedded models are {', '.join(embedded_names())} (or another "
                       "torchvision classifier name); else give package.module:Class, path/to/file.py:Class or a "
                       ".onnx file")


def resolve_model(spec: Any, **options: Any) -> Any:
    """The model for ``spec`` (see the module docs): an instance for embedded names and ``.onnx`` files, the
    named object for ``module:attr`` specs (a class stays a class: a pool makes one per worker), ``spec``
    itself for anything that is not a string. ``ConfigError`` for unknown names, options or files."""
    unknown = set(options) - OPTIONS
    if unknown:
        raise ConfigError(f"unknown model option(s) {sorted(unknown)}; known: {', '.join(sorted(OPTIONS))}")
    given = {k: v for k, v in options.items() if v is not None}
    if "runtime" in given:
        check_runtime(given["runtime"])
    if not isinstance(spec, str):
        return spec
    if spec in EMBEDDED or (":" not in spec and not spec.endswith(".onnx") and _torchvision_classifier(spec)):
        build, takes = EMBEDDED.get(spec) or (_classifier(spec), EMBEDDED["resnet50"][1])
        ignored = sorted(set(given) - takes)
        if ignored:
            log.debug("model %s takes no %s: ignored", spec, ", ".join(ignored))
        return build(**{k: v for k, v in given.items() if k in takes})
    if spec.endswith(".onnx"):
        if not os.path.isfile(spec):
            raise ConfigError(f"ONNX file not found: {spec}")
        return OnnxModel(spec)
    if ":" in spec:
        return _import_attr(spec)
    raise _unknown(spec)


def frontend_model(spec: Any) -> Any:
    """The copy of ``spec``'s model an HTTP front end runs ``preprocess`` with (never set up): for the embedded
    classifiers a :class:`~gpufleet.models.zoo.classifier_front.ClassifierFrontEnd`, which needs no torch while
    a GPU engine decodes the JPEGs; for any other spec a fresh instance of the model itself."""
    arch = getattr(EMBEDDED[spec][0], "arch", None) if isinstance(spec, str) and spec in EMBEDDED else None
    if arch is not None:
        from gpufleet.models.zoo.classifier_front import ClassifierFrontEnd

        return ClassifierFrontEnd(arch)
    return model_factory(spec)()


def model_name(spec: Any) -> str:
    """A short name for ``spec`` (e.g. the served model's name under ``/v2/models/``)."""
    if isinstance(spec, str):
        if spec.endswith(".onnx"):
            return Path(spec).stem
        if ":" in spec:
            attr = spec.rsplit(":", 1)[1]
            return str(getattr(resolve_model(spec), "name", None) or attr.rsplit(".", 1)[-1])
        return spec
    named = getattr(spec, "name", None)
    if isinstance(named, str):
        return named
    return getattr(spec, "__name__", None) or type(spec).__name__


def model_factory(model: Any) -> Callable[[], Any]:
    """A zero-argument callable that makes one fresh model instance per worker.

    Accepts a model class (instantiated per worker), a model instance (deep-copied per worker, so each
    worker owns its weights), a plain function (wrapped in :class:`FunctionModel`), or any string spec of
    :func:`resolve_model` (an embedded name, ``module:Class`` ...).
    """
    if isinstance(model, str):
        model = resolve_model(model)
    if inspect.isclass(model):
        if not callable(getattr(model, "predict", None)):
            raise ConfigError(f"model class {model.__name__} has no predict(batch) method")
        return model
    if callable(getattr(model, "predict", None)):
        template = model
        return lambda: copy.deepcopy(template)
    if callable(model):
        fn = model
        return lambda: FunctionModel(fn)
    raise ConfigError(
        f"cannot pool {type(model).__name__!r}: pass a model class, a model instance with predict(batch), "
        f"a function f(batch) -> list, or a model name ({', '.join(embedded_names())})"
    )


# -- module:attr and file.py:attr ---------------------------------------------------------------------------
def _import_attr(spec: str) -> Any:
    where, attr = spec.rsplit(":", 1)
    if not where or not attr:
        raise _unknown(spec)
    if where.endswith(".py") or os.sep in where or "/" in where:
        obj = _import_file(where)
    else:
        _cwd_on_path()
        try:
            obj = importlib.import_module(where)
        except ImportError as exc:
            raise ConfigError(f"cannot import module {where!r} for model {spec!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{where} has no attribute {attr!r} (model {spec!r})") from None
    return obj


def _cwd_on_path() -> None:
    """Put the current folder first on ``sys.path`` (as uvicorn and ``python -m`` do): ``gpufleet serve
    mymodel:Model`` run from the file's folder finds it. Absolute, so spawned process workers find it too."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, cwd)


def _import_file(path: str) -> Any:
    """Import ``path`` under a unique module name kept in ``sys.modules`` (process workers load it again by
    that name: see ``gpufleet.engine.placement``)."""
    p = Path(path).resolve()
    if not p.is_file():
        raise ConfigError(f"model file not found: {path}")
    name = f"gpufleet_user_{p.stem}_{abs(hash(str(p))) % 10**8}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module
