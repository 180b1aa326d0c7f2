"""``run`` (decode -> infer -> JSONL / annotated video -> summary) and ``frames`` (an iterator of results).

All sinks are written on the caller's thread, so Ctrl-C (``KeyboardInterrupt``), raised there, always gets
to close them: JSONL keeps every line written so far and the mp4 gets its index, a playable partial file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gpufleet.config import with_options
from gpufleet.video import per_device
from gpufleet.video.config import VideoConfig
from gpufleet.video.job import FrameResult, StreamEnd, VideoJob, stream_names
from gpufleet.video.local import run_here

__all__ = ["frames", "output_paths", "run"]

log = logging.getLogger(__name__)

Inputs = str | Path | Sequence[str | Path]


def _config(model: Any, config: VideoConfig | None, options: dict[str, Any]) -> VideoConfig:
    if model is not None:
        options["model"] = model
    return with_options(config or VideoConfig(), options, "gpufleet.video.VideoConfig")


def _inputs(inputs: Inputs) -> list[str]:
    return [str(inputs)] if isinstance(inputs, (str, Path)) else [str(i) for i in inputs]


def output_paths(path: str | None, names: Sequence[str]) -> dict[str, str | None]:
    """One output file per stream: ``path`` itself for one input, else ``stem.<stream>.ext`` (or ``path``
    with ``{stream}`` filled in)."""
    if not path:
        return {n: None for n in names}
    if "{stream}" in path:
        return {n: path.replace("{stream}", n) for n in names}
    if len(names) == 1:
        return {names[0]: path}
    p = Path(path)
    return {n: str(p.with_name(f"{p.stem}.{n}{p.suffix}")) for n in names}


def frames(inputs: Inputs, model: Any = None, *, config: VideoConfig | None = None, keep_images: bool = False,
           **options: Any) -> Iterator[FrameResult]:
    """Per-frame results of every input (in frame order within each stream); failed inputs are logged.

    >>> for r in frames("clip.mp4", "textdet", cpu_devices=1):  # doctest: +SKIP
    ...     print(r.frame, r.pts, r.results)
    """
    cfg = _config(model, config, options)
    with VideoJob(_inputs(inputs), cfg, keep_images=keep_images) as job:
        for ev in job.events():
            if isinstance(ev, FrameResult):
                yield ev
            elif ev.status == "failed":
                log.error("%s", ev.error)


def run(inputs: Inputs, model: Any = None, *, config: VideoConfig | None = None,
        on_frame: Callable[[FrameResult], None] | None = None,
        on_stream_end: Callable[[StreamEnd], None] | None = None, **options: Any) -> dict[str, Any]:
    """Run ``inputs`` through ``model`` (default ``textdet``), write the sinks and return the summary.

    Options are :class:`VideoConfig` fields (``jsonl=``, ``out=``, ``cpu_devices=``, ``decoder=`` ...).
    ``on_frame`` is called on this thread after each frame is written. A failed input is reported in its
    ``inputs[i]["error"]`` and gives ``exit_code`` 1; the others finish. Ctrl-C (or ``KeyboardInterrupt``
    from ``on_frame``) stops decoding, closes every file in a valid state and returns with
    ``interrupted=True`` and ``exit_code`` 130.

    >>> summary = run(["a.mp4", "b.mp4"], "textdet", jsonl="out/frames.jsonl", cpu_devices=2)  # doctest: +SKIP
    """
    cfg = _config(model, config, options)
    specs = _inputs(inputs)
    names = stream_names(specs)
    jsonl_paths, out_paths = output_paths(cfg.jsonl, names), output_paths(cfg.out, names)
    shares = per_device.plan(specs, cfg, on_frame)
    if shares is not None:
        return per_device.run_shares(specs, names, cfg, shares, jsonl_paths, out_paths, on_stream_end)
    return run_here(specs, names, cfg, jsonl_paths, out_paths, on_frame, on_stream_end)
