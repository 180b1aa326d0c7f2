"""The batch step every worker runs: preprocess → prepare_batch → predict (or launch/collect) → out-of-memory
split → output check → postprocess, with the errors each stage gives its items.

One :class:`BatchStep` per model copy: a thread worker runs it on its thread, a process worker's child in its
process (and a Ray actor would in its own). The worker decides where and when each part runs (a thread
worker preprocesses in the pool and postprocesses on the pool's threads; a child does both itself) — the
step decides what each part does, so every backend serves and fails items alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from gpufleet.engine.oom import empty_cache, is_oom, is_sticky_cuda_error
from gpufleet.errors import GpufleetError, InputError, WorkerError
from gpufleet.models.base import optional_stage

__all__ = ["BatchStep", "poll_interval", "preprocess_error"]

_POLL_S = 0.0002  # how often a worker with a batch on the device checks whether it has finished ...
_POLL_MAX_S = 0.005  # ... and at most how seldom, for a batch that has run for long


def poll_interval(age_s: float) -> float:
    """How long a worker waiting for a launched batch (``age_s`` seconds on the device) waits before it asks
    ``ready`` again: every 0.2 ms for batches of up to 20 ms; one that has run for longer is checked less often
    (1% of its age, at most every 5 ms), so a minutes-long item does not keep a core busy polling."""
    return min(_POLL_MAX_S, max(_POLL_S, 0.01 * age_s))

log = logging.getLogger(__name__)


def preprocess_error(exc: BaseException) -> GpufleetError:
    """What a failed ``preprocess`` answers its item with: the model's own ``GpufleetError`` as it is, anything
    else as ``InputError`` (a preprocess fails on a bad item), the original chained."""
    if isinstance(exc, GpufleetError):
        return exc
    err = InputError(f"preprocess failed: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


class BatchStep:
    """The stages of one model copy (see the module docstring); ``name`` prefixes the errors it makes.

    ``oom_batch`` is the smallest batch size that ran out of memory since the worker last reset it (0: none),
    from which the worker lowers its maximum batch size. A model error on a batch of several items is not the
    batch's fate: the batch is served again in halves until the failing item(s) are alone, so only they get
    the error (at most ``2n - 1`` predict calls for ``n`` items); ``isolated`` counts those splits since the
    worker last reset it. A sticky CUDA error is never retried.

    A model may define ``prepare_batch(batch) -> list``: work on a whole batch ahead of its launch (the
    embedded classifiers decode JPEGs on the GPU there), which a thread worker runs on a thread of its own,
    one batch ahead, so it overlaps the previous batch on the device (``prepared`` says whether it has one).
    With ``prepare_eagerly = True`` that thread prepares whatever is queued as soon as it comes, in chunks that
    the serving loop joins into batches (``prepare_batch`` must then return a list of per-item values).
    It must leave items that ``launch``/``predict`` accept either way: a ``prepare_batch`` that raises leaves
    the batch as it was, and ``launch``/``predict`` then do the work (and fail only the items that fail).
    """

    def __init__(self, model: Any, device: Any, name: str) -> None:
        self.model = model
        self.device = device
        self.name = name
        self.pre: Callable[[Any], Any] | None = optional_stage(model, "preprocess")
        self.post: Callable[[Any], Any] | None = optional_stage(model, "postprocess")
        self.pipelined = callable(getattr(model, "launch", None)) and callable(getattr(model, "collect", None))
        self.ready: Callable[[Any], bool] | None = getattr(model, "ready", None) if self.pipelined else None
        prep = getattr(model, "prepare_batch", None)
        self.prep: Callable[[list], list] | None = prep if callable(prep) else None
        # ``prepare_eagerly``: prepare what is queued as soon as it comes (chunks the loop joins into batches),
        # not one batch at a time when the device has room for it.
        self.eager = self.prep is not None and bool(getattr(model, "prepare_eagerly", False))
        self.oom_batch = 0
        self.isolated = 0

    # -- errors -------------------------------------------------------------------------------------------
    def error(self, exc: BaseException) -> GpufleetError:
        """A whole batch's error: the model's own ``GpufleetError`` as it is (e.g. ``InputError`` for mismatched
        shapes), anything else as ``WorkerError``, the original chained."""
        if isinstance(exc, GpufleetError):
            return exc
        err = WorkerError(f"{self.name}: predict failed: {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        return err

    def _checked(self, out: Any, n: int) -> list:
        if not isinstance(out, (list, tuple)) or len(out) != n:
            got = f"{len(out)} outputs" if isinstance(out, (list, tuple)) else type(out).__name__
            raise WorkerError(f"{self.name}: predict returned {got} for {n} items (must be a list of the same length)")
        return out if isinstance(out, list) else list(out)

    def _oom(self, n: int) -> None:
        empty_cache(self.device)
        self.oom_batch = n if not self.oom_batch else min(self.oom_batch, n)

    # -- stages -------------------------------------------------------------------------------------------
    def preprocess(self, items: list) -> dict[int, GpufleetError]:
        """Preprocess ``items`` in place; the errors of the items that failed, by index."""
        errors: dict[int, GpufleetError] = {}
        pre = self.pre
        if pre is None:
            return errors
        for i in range(len(items)):
            try:
                out = pre(items[i])
                if out is not items[i]:  # a StackedBatch keeps its block only while every row is unchanged
                    items[i] = out
            except Exception as exc:  # noqa: BLE001 - a bad item fails alone
                errors[i] = preprocess_error(exc)
        return errors

    @property
    def prepared(self) -> bool:
        """Whether the model has a ``prepare_batch`` stage."""
        return self.prep is not None

    def prepare(self, items: list) -> list:
        """The model's ``prepare_batch(items)``, or ``items`` unchanged when it raises or returns another
        number of items (``launch``/``predict`` then do that work; the cache is freed after out of memory)."""
        if self.prep is None:
            return items
        try:
            out = self.prep(items)
        except Exception as exc:  # noqa: BLE001 - launch/predict redo it and fail only the items that fail
            if is_oom(exc):
                empty_cache(self.device)
            log.debug("%s: prepare_batch failed (%s: %s); the batch goes on unprepared", self.name,
                      type(exc).__name__, exc)
            return items
        if not isinstance(out, list) or len(out) != len(items):
            log.warning("%s: prepare_batch returned %s for %d items; ignored", self.name,
                        f"{len(out)} items" if isinstance(out, list) else type(out).__name__, len(items))
            return items
        return out

    def launch(self, items: list) -> Any:
        """Start ``items`` on the device (models with ``launch``/``collect``): the handle for :meth:`finish`, or
        ``None`` when the launch ran out of memory (``finish`` then predicts in parts). Raises the batch's
        error (:meth:`error`)."""
        try:
            return self.model.launch(items)
        except Exception as exc:
            if is_oom(exc):
                self._oom(len(items))
                return None
            if len(items) > 1 and not is_sticky_cuda_error(exc):
                return None  # finish() predicts it and isolates the failing item(s)
            raise self.error(exc) from exc

    def finish(self, items: list, handle: Any = None) -> tuple[list, dict[int, GpufleetError]]:
        """The outputs of ``items``: collected from ``handle``, or predicted now. Out of memory: the cache is
        freed and the batch served in halves; an item that does not fit alone fails alone. Returns the outputs
        and the errors of items that failed alone (their output is ``None``); raises the batch's error."""
        if handle is not None:
            try:
                out, _ = self._attempt(self.model.collect, handle, len(items))
            except GpufleetError as err:
                if len(items) < 2 or self._sticky(err):
                    raise
                out = None  # predicted again below, in halves around the failing item(s)
            if out is not None:
                return out, {}
        outputs: list[Any] = [None] * len(items)
        errors: dict[int, GpufleetError] = {}
        self._predict(items, 0, outputs, errors)
        return outputs, errors

    def _attempt(self, call: Callable[[Any], Any], arg: Any, n: int) -> tuple[list | None, BaseException | None]:
        """``call(arg)``'s ``n`` outputs, checked; ``(None, the error)`` when it ran out of memory (the cache is
        freed, ``oom_batch`` noted); any other error is raised as the batch's."""
        try:
            return self._checked(call(arg), n), None
        except GpufleetError:
            raise
        except Exception as exc:
            if not is_oom(exc):
                raise self.error(exc) from exc
            self._oom(n)
            return None, exc

    @staticmethod
    def _sticky(err: BaseException) -> bool:
        return is_sticky_cuda_error(err.__cause__ if err.__cause__ is not None else err)

    def _predict(self, items: list, offset: int, outputs: list, errors: dict[int, GpufleetError]) -> None:
        failure: GpufleetError
        try:
            out, oom = self._attempt(self.model.predict, items, len(items))
        except GpufleetError as exc:  # a model error: isolate the item(s) it belongs to
            if self._sticky(exc):
                raise
            failure = exc
            if len(items) > 1:
                self.isolated += 1
        else:
            if out is not None:
                outputs[offset:offset + len(items)] = out
                return
            failure = WorkerError(f"{self.name}: out of memory on a single item: {oom}")
            failure.__cause__ = oom
        if len(items) == 1:
            errors[offset] = failure  # the item that fails, alone
            return
        half = len(items) // 2
        self._predict(items[:half], offset, outputs, errors)
        self._predict(items[half:], offset + half, outputs, errors)

    def postprocess(self, outputs: list, errors: dict[int, GpufleetError]) -> None:
        """Postprocess ``outputs`` in place, skipping items in ``errors``; one bad output fails only its item."""
        post = self.post
        if post is None:
            return
        for i, out in enumerate(outputs):
            if i in errors:
                continue
            try:
                outputs[i] = post(out)
            except Exception as exc:  # noqa: BLE001
                err = exc if isinstance(exc, GpufleetError) else WorkerError(
                    f"{self.name}: postprocess failed: {type(exc).__name__}: {exc}")
                if err is not exc:
                    err.__cause__ = exc
                errors[i] = err
                outputs[i] = None

    # -- a whole batch, for backends that run it away from the pool (a child process, a Ray actor) ----------
    def begin(self, items: list, preprocessed: bool, timings: dict[str, float]) -> tuple[list[int], dict]:
        """Preprocess ``items`` in place unless that ran elsewhere (``timings["preprocess"]``: seconds per item);
        the indices of the items still alive, and the errors of the others."""
        errors: dict[int, GpufleetError] = {}
        if self.pre is not None and not preprocessed:
            t0 = time.monotonic()
            errors = self.preprocess(items)
            timings["preprocess"] = (time.monotonic() - t0) / max(1, len(items))
        return [i for i in range(len(items)) if i not in errors], errors

    @staticmethod
    def alive_items(items: list, alive: list[int]) -> list:
        """The items that passed preprocess (all of them: the list itself, so a StackedBatch keeps its block)."""
        return items if len(alive) == len(items) else [items[i] for i in alive]

    def complete(self, items: list, alive: list[int], errors: dict[int, GpufleetError], handle: Any, t0: float,
                 timings: dict[str, float]) -> tuple[list, float]:
        """Collect (``handle``) or predict the alive items and postprocess them: every item's output by index
        (``None`` where ``errors``, which gains the items that failed alone), and the seconds of media produced.
        ``timings`` gains ``predict`` (since ``t0``), the model's own stages and ``postprocess``. Raises the
        batch's error."""
        outputs: list[Any] = [None] * len(items)
        self.oom_batch = self.isolated = 0
        if not alive:
            return outputs, 0.0
        got, failed = self.finish(self.alive_items(items, alive), handle)
        timings["predict"] = time.monotonic() - t0
        timings.update(self.model_timings())
        media = self.media_seconds(got, failed)
        t1 = time.monotonic()
        self.postprocess(got, failed)
        if self.post is not None:
            timings["postprocess"] = (time.monotonic() - t1) / len(alive)
        for j, i in enumerate(alive):
            if j in failed:
                errors[i] = failed[j]
            else:
                outputs[i] = got[j]
        return outputs, media

    def model_timings(self) -> dict[str, float]:
        """The model's own stage times of its last batch (``last_timings``: e.g. h2d, compute, d2h)."""
        return {k: float(v) for k, v in getattr(self.model, "last_timings", {}).items()}

    def media_seconds(self, outputs: list, errors: dict[int, GpufleetError]) -> float:
        """Seconds of media the batch produced (models with ``output_seconds``: audio, video), else 0."""
        seconds_of = getattr(self.model, "output_seconds", None)
        if seconds_of is None:
            return 0.0
        return sum(float(seconds_of(o)) for i, o in enumerate(outputs) if i not in errors)
