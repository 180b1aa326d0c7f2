"""A video job in this process: decode, infer, write each stream's sinks on the caller's thread, summarise.

:func:`gpufleet.video.run` calls :func:`run_here` when the job stays in one process, and each worker process
of :mod:`gpufleet.video.per_device` calls it on its share of the inputs.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from gpufleet.video.config import VideoConfig
from gpufleet.video.job import FrameResult, StreamEnd, VideoJob
from gpufleet.video.progress import Progress, want_progress
from gpufleet.video.sinks import JsonlSink, VideoSink
from gpufleet.video.summary import summary_record

__all__ = ["run_here"]

log = logging.getLogger(__name__)


class _Sinks:
    """The open sinks of one stream, created at its first frame (a failed input leaves no files)."""

    def __init__(self, jsonl: str | None, out: str | None, fps: float, encoder: str) -> None:
        self.jsonl = JsonlSink(jsonl) if jsonl else None
        self.video = VideoSink(out, fps or 30.0, encoder) if out else None

    def write(self, r: FrameResult) -> None:
        if self.jsonl is not None:
            self.jsonl.write(r.record())
        if self.video is not None and r.image is not None:
            self.video.write(r.image, r.results)

    def flush(self) -> None:
        if self.jsonl is not None:
            self.jsonl.flush()

    def close(self) -> None:
        try:
            if self.jsonl is not None:
                self.jsonl.close()
        finally:
            if self.video is not None:
                self.video.close()


class _FrameBoundary:
    """Ctrl-C lands between frames: while a frame is being written to its sinks, SIGINT waits until the write is
    done, so the JSONL, the video and the summary's count agree (a Ctrl-C in the middle of a write used to leave
    one more JSONL line than the count); once the outputs are being closed (``closing``), a further Ctrl-C is
    only noted. Only on the main thread with Python's own SIGINT handler; elsewhere a no-op."""

    def __init__(self) -> None:
        self.busy = False
        self.pending = False
        self.closing = False  # the outputs are being closed: a Ctrl-C now is noted, not raised
        self._old: Any = None

    def __enter__(self) -> _FrameBoundary:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._old = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.closing:
            log.warning("interrupted again: the outputs are being closed")
        elif self.busy:
            self.pending = True
        else:
            self.closing = True  # from here on the run only closes its outputs
            raise KeyboardInterrupt

    def done(self) -> None:
        """The frame is written: a Ctrl-C that came meanwhile is raised now."""
        self.busy = False
        if self.pending:
            self.pending, self.closing = False, True
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def run_here(specs: Sequence[str], names: Sequence[str], cfg: VideoConfig, jsonl_paths: dict[str, str | None],
             out_paths: dict[str, str | None], on_frame: Callable[[FrameResult], None] | None = None,
             on_stream_end: Callable[[StreamEnd], None] | None = None,
             on_start: Callable[[dict[str, int | None]], None] | None = None) -> dict[str, Any]:
    """:func:`gpufleet.video.run` in this process, with the stream names and output paths given; ``on_start`` is called
    once the model is set up, with each stream's expected frame count (``None``: unknown), and the timed
    part begins when it returns."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    job = VideoJob(list(specs), cfg, keep_images=bool(cfg.out), names=names)
    sinks: dict[str, _Sinks] = {}
    # Frames written to the sinks, per stream: what the summary counts. The decode threads' own count runs
    # ahead of it by the frames still queued for this thread when Ctrl-C came (169 counted, 81 written).
    written: Counter[str] = Counter()
    ends: dict[str, StreamEnd] = {}
    interrupted = False
    pool_stats: dict[str, Any] = {}
    fps_of = {s.name: (s.info.fps if s.info else 30.0) for s in job.streams}
    with _FrameBoundary() as boundary:
        try:
            with Progress(want_progress(cfg.progress)) as progress:
                totals = {s.name: -(-s.info.frames // cfg.every_nth) if s.info is not None and s.info.frames else None
                          for s in job.streams}
                for name, total in totals.items():
                    progress.add(name, total)
                if on_start is not None:
                    on_start(totals)
                t_start, cpu0 = time.perf_counter(), time.process_time()  # set-up (model load) not counted
                def flush() -> None:  # nothing came for a while (a stalled live stream): its lines are due now
                    for sk in sinks.values():
                        sk.flush()

                for ev in job.events(on_idle=flush):
                    if isinstance(ev, StreamEnd):
                        ends[ev.stream] = ev
                        if ev.stream in sinks:  # a finished stream's files are closed whole, like a frame
                            boundary.busy = True
                            sinks[ev.stream].close()
                            boundary.done()
                        progress.finish(ev.stream, ev.status if ev.status != "failed" else "[red]failed")
                        if on_stream_end is not None:
                            on_stream_end(ev)
                        continue
                    sink = sinks.get(ev.stream)
                    if sink is None:
                        sink = sinks[ev.stream] = _Sinks(jsonl_paths[ev.stream], out_paths[ev.stream],
                                                         fps_of[ev.stream] / cfg.every_nth, cfg.encoder)
                    boundary.busy = True
                    sink.write(ev)
                    written[ev.stream] += 1
                    boundary.done()
                    progress.advance(ev.stream)
                    if on_frame is not None:
                        on_frame(ev)
                elapsed = time.perf_counter() - t_start
        except KeyboardInterrupt:
            interrupted = True
            elapsed = time.perf_counter() - wall0
            log.warning("interrupted: closing the outputs")
        finally:
            # A further Ctrl-C must not cut the closing short: a terminal sends one to every process of its group,
            # and a per-device run's parent passes its own on to its workers as well.
            boundary.closing = True
            for sink in sinks.values():  # idempotent: finished streams' sinks are already closed
                sink.close()
            if job.pool is not None:
                pool_stats = job.pool.stats()
            job.close(drain=not interrupted)
    cpu_s, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return _summary(cfg, job, ends, sinks, written, jsonl_paths, out_paths, pool_stats, elapsed, wall, cpu_s,
                    interrupted)


def _stage_total(stats: dict[str, Any], name: str, count: int) -> float:
    st = stats.get("stages", {}).get(name)
    return st["mean_ms"] / 1e3 * count if st else 0.0


def _summary(cfg: VideoConfig, job: VideoJob, ends: dict[str, StreamEnd], sinks: dict[str, _Sinks],
             written: Counter[str], jsonl_paths: dict[str, str | None], out_paths: dict[str, str | None],
             stats: dict[str, Any], elapsed: float, wall: float, cpu_s: float, interrupted: bool) -> dict[str, Any]:
    rows = []
    for s in job.streams:
        end = ends.get(s.name) or StreamEnd(stream=s.name, input=s.spec, status="interrupted", frames=s.frames,
                                            decoder=s.decoder, decoder_note=s.note, segments=s.segments)
        sink = sinks.get(s.name)
        video = sink.video if sink is not None else None
        frames = written[s.name]
        rows.append({
            "stream": s.name, "input": s.spec, "status": end.status, "error": end.error, "frames": frames,
            "elapsed_s": round(end.elapsed_s, 3), "fps": round(frames / end.elapsed_s, 2) if end.elapsed_s else 0.0,
            "decoder": end.decoder, "decoder_note": end.decoder_note, "segments": end.segments,
            "reconnects": end.reconnects,
            "jsonl": jsonl_paths[s.name] if sink is not None and sink.jsonl is not None else None,
            "out": out_paths[s.name] if video is not None and video.frames else None,
            "encoder": video.encoder if video is not None else None,
            "encoder_note": video.note if video is not None else "",
        })
    requests, batches = stats.get("total_requests", 0), stats.get("total_batches", 0)
    videos = [sk.video for sk in sinks.values() if sk.video is not None]
    stages = {
        "decode": sum(e.decode_s for e in ends.values()),
        "preprocess": sum(e.prepare_s for e in ends.values()) + _stage_total(stats, "preprocess", requests),
        "infer": _stage_total(stats, "predict", batches),
        "postprocess": _stage_total(stats, "postprocess", requests),
        "draw": sum(v.draw_s for v in videos),
        "encode": sum(v.encode_s for v in videos),
    }
    return summary_record(
        rows=rows, elapsed=elapsed, wall=wall, cpu_s=cpu_s, interrupted=interrupted, processes=1,
        model=cfg.model if isinstance(cfg.model, str) else type(cfg.model).__name__,
        devices=[d.label for d in job.devices], encoders={v.encoder for v in videos if v.encoder},
        batches=batches, avg_batch_size=stats.get("avg_batch_size", 0.0), stages=stages,
        per_device=[{k: g[k] for k in ("device", "total_requests", "total_batches", "avg_batch_size")}
                    for g in stats.get("per_gpu_stats", [])])
