"""The model contract: ``setup(device)``, ``predict(batch) -> list``, optional ``preprocess``/``postprocess``.

The engine makes one model instance per worker and calls, in order: ``setup`` once on the worker's device,
``preprocess`` per item (CPU threads, in parallel), ``predict`` per batch (always a list in, a list of the
same length out), ``postprocess`` per output (CPU). A plain function ``f(batch) -> list`` works too.

Serving extras (``gpufleet serve --http-workers N``, thread backend): a model whose ``preprocess`` needs no
``setup`` sets the class attribute ``frontend_preprocess = True`` and the HTTP front-end processes run it;
an optional ``prepare_frontend(devices)`` is called once per front end with the engine's devices first.
Process backend: an optional ``prepare_spare()`` runs in a spare child as soon as it has unpickled the model
(long before it takes over): work ``setup`` needs that touches no device, such as imports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpufleet.devices.device import Device

__all__ = ["FunctionModel", "Model", "StackedBatch", "apply_pool_settings", "optional_stage", "setup_model"]


class StackedBatch(list):
    """A batch whose items are the rows of one array or tensor, ``stacked`` (shape ``[n, *item_shape]``).

    Process workers hand ``predict`` such a batch when every item was an array or CPU tensor of one shape and
    dtype: the items arrived in one block of shared memory. It is an ordinary list of per-item views, so any
    model works unchanged; a model that stacks its inputs can take ``stacked`` as the batch instead (one copy
    to the device, no per-item work), as :class:`gpufleet.models.TorchModel` does.
    """

    __slots__ = ("stacked",)

    def __init__(self, stacked: Any) -> None:
        super().__init__(stacked.unbind(0) if hasattr(stacked, "unbind") else list(stacked))
        self.stacked = stacked


def _forgets(name: str) -> Callable[..., Any]:
    base = getattr(list, name)

    def method(self: StackedBatch, *args: Any, **kwargs: Any) -> Any:
        self.stacked = None  # the list changed: its rows may no longer be the block's
        return base(self, *args, **kwargs)

    method.__name__ = name
    return method


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop", "remove",
              "clear", "sort", "reverse"):
    setattr(StackedBatch, _name, _forgets(_name))


def stacked_rows(batch: list) -> Any:
    """``batch.stacked`` when ``batch`` is a :class:`StackedBatch` still holding its rows, else ``None``."""
    stacked = getattr(batch, "stacked", None)
    return stacked if stacked is not None and len(stacked) == len(batch) else None


class Model:
    """Base class for user models: implement ``setup`` and ``predict``; the rest is optional.

    >>> class Double(Model):
    ...     def setup(self, device): self.k = 2
    ...     def predict(self, batch): return [self.k * x for x in batch]
    """

    def setup(self, device: Device) -> None:
        """Load weights onto ``device`` (``device.torch`` is e.g. ``"cuda:1"``) and warm up."""

    def predict(self, batch: list) -> list:
        """Run one batch: a list of preprocessed items in, a list of the same length out."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict(batch) -> list")

    def preprocess(self, item: Any) -> Any:
        """Turn one raw item (bytes, JSON, array) into a model input; runs on CPU threads."""
        return item

    def postprocess(self, output: Any) -> Any:
        """Turn one model output into the result returned to the caller."""
        return output


class FunctionModel(Model):
    """Wraps a plain ``f(batch) -> list`` so it can be pooled."""

    def __init__(self, fn: Callable[[list], list]) -> None:
        self.fn = fn
        self.device: Device | None = None

    def setup(self, device: Device) -> None:
        self.device = device

    def predict(self, batch: list) -> list:
        return self.fn(batch)


def optional_stage(model: Any, name: str) -> Callable[[Any], Any] | None:
    """The model's ``preprocess``/``postprocess`` if it defines a real one, else ``None`` (skipped)."""
    fn = getattr(model, name, None)
    if fn is None or not callable(fn):
        return None
    if isinstance(model, Model) and getattr(type(model), name, None) is getattr(Model, name):
        return None
    return fn


def setup_model(model: Any, device: Any) -> None:
    """Call the model's ``setup(device)`` when it has one (the contract makes it optional)."""
    fn = getattr(model, "setup", None)
    if callable(fn):
        fn(device)


def apply_pool_settings(model: Any, *, batch_buckets: tuple[int, ...] | None, max_batch_size: int) -> None:
    """Tell a fresh model instance, before its ``setup``, the pool's batch buckets and max batch size (models
    that capture CUDA graphs or warm up per batch size read them); thread and process workers both call it."""
    if batch_buckets and hasattr(model, "batch_buckets"):
        model.batch_buckets = batch_buckets  # e.g. TorchModel's CUDA-graph buckets
    if max_batch_size > 0 and getattr(model, "max_batch_size", 0) is None:
        model.max_batch_size = max_batch_size  # models that size warm-up or graphs by it
