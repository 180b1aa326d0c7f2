"""``VideoJob``: decode every input (and every segment of a split input) on its own thread, run the frames
through one :class:`gpufleet.Pool`, and hand back per-frame results in frame order per stream.

Threads: one per input, plus one per segment of a file. Files are decoded as spans (see
:mod:`gpufleet.video.segments`): when a decoder has read its last frame, a new thread takes its place on the
back half of the span with the most frames left, of any input, so that the decoders finish together. Each
decoding thread prepares its chunks
on the frames' device (see :mod:`gpufleet.video.models`) and feeds them to ``Pool.map(ordered=True)``, which
routes every batch to a worker through the pool's balancer. Results meet in one bounded queue that the
caller's thread drains (:meth:`VideoJob.events`); every stream ends with exactly one :class:`StreamEnd`,
``failed`` with a one-line error when its input is missing, not a video, undecodable or never connects,
while the other streams go on.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from gpufleet.engine import Pool
from gpufleet.errors import GpufleetError
from gpufleet.video.config import VideoConfig
from gpufleet.video.models import make_preparer, on_device, resolve_model
from gpufleet.video.segments import OrderedMerge, Segment, Span, Spans, split
from gpufleet.video.sinks import jsonable
from gpufleet.video.sources import (
    NVDEC_CODECS,
    CpuSource,
    NvdecSource,
    Reconnecting,
    SourceError,
    VideoInfo,
    is_url,
    nvdec_available,
    probe,
)

__all__ = ["FrameResult", "StreamEnd", "VideoJob", "stream_names"]

log = logging.getLogger(__name__)


@dataclass
class FrameResult:
    """One frame's results; ``image`` is the decoded frame when the job keeps frames (for drawing)."""

    stream: str
    frame: int
    pts: float
    results: Any
    image: Any = None
    error: str | None = None

    def record(self) -> dict[str, Any]:
        """The JSONL line: ``{"stream", "frame", "pts", "results"}`` (+ ``"error"`` for a failed frame)."""
        rec = {"stream": self.stream, "frame": self.frame, "pts": round(self.pts, 6),
               "results": None if self.error else jsonable(self.results)}
        if self.error:
            rec["error"] = self.error
        return rec


@dataclass
class StreamEnd:
    """A stream finished: ``status`` is ``ok``, ``failed`` (``error`` says why) or ``interrupted``."""

    stream: str
    input: str
    status: str
    error: str | None = None
    frames: int = 0
    elapsed_s: float = 0.0
    decoder: str = ""
    decoder_note: str = ""
    segments: int = 0
    decode_s: float = 0.0
    prepare_s: float = 0.0
    reconnects: int = 0
    fps_in: float = 0.0


@dataclass
class _Stream:
    name: str
    spec: str
    info: VideoInfo | None = None
    error: BaseException | None = None
    decoder: str = ""
    note: str = ""
    segments: int = 0
    frames: int = 0
    decode_s: float = 0.0
    prepare_s: float = 0.0
    reconnects: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def stream_names(inputs: Sequence[str]) -> list[str]:
    """A short unique name per input: the file stem, or host+path of a URL."""
    names: list[str] = []
    seen: Counter[str] = Counter()
    for spec in inputs:
        base = Path(spec.split("?")[0]).stem if not is_url(spec) else spec.split("://", 1)[1]
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_.") or "stream"
        seen[base] += 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


class VideoJob:
    """Run ``inputs`` through ``config.model``; iterate :meth:`events`, then :meth:`close`.

    >>> with VideoJob(["clip.mp4"], VideoConfig(cpu_devices=1)) as job:  # doctest: +SKIP
    ...     for ev in job.events(): print(ev)
    """

    def __init__(self, inputs: Sequence[str], config: VideoConfig, *, keep_images: bool = False,
                 names: Sequence[str] | None = None) -> None:
        if not inputs:
            raise GpufleetError("no input given")
        self.config = cfg = config
        self.keep_images = keep_images
        self.stop = threading.Event()
        names = list(names) if names is not None else stream_names([str(i) for i in inputs])
        self.streams = [_Stream(n, str(s)) for n, s in zip(names, inputs, strict=True)]
        for s in self.streams:  # files are probed now: fast (packets only), and they size the model
            if not is_url(s.spec):
                try:
                    s.info = probe(s.spec, timeout_s=cfg.timeout_s)
                except SourceError as exc:
                    s.error = exc
        first = next((s.info for s in self.streams if s.info is not None), None)
        self.preparer: Any = None
        self.pool: Pool | None = None
        if any(s.error is None for s in self.streams):  # no model is loaded when no input can be read
            model = resolve_model(cfg.model, runtime=cfg.runtime,
                                  size=(first.width, first.height) if first else None)
            self.preparer = make_preparer(model)
            from gpufleet.devices import select

            devices = select(cfg.devices, cpu_devices=cfg.cpu_devices)
            if sum(d.is_cuda for d in devices) > 1:
                model = on_device(model)  # a stream decoded on one GPU may be batched on another
            self.pool = Pool(model, cfg.devices, cpu_devices=cfg.cpu_devices, max_batch_size=cfg.batch_size,
                             max_probe_batch=cfg.max_batch_size, max_wait_ms=cfg.max_wait_ms)
        self.devices = self.pool.devices if self.pool is not None else []
        self._load: Counter[int] = Counter()
        self._load_lock = threading.Lock()
        self._spans = Spans(cfg.steal_frames)
        self._out: queue.Queue[Any] = queue.Queue(maxsize=cfg.queue_size * len(self.streams) + len(self.streams))
        self._threads: list[threading.Thread] = []
        self.started = time.perf_counter()

    # -- public -------------------------------------------------------------------------------------------
    def events(self, on_idle: Callable[[], None] | None = None) -> Iterator[FrameResult | StreamEnd]:
        """Frame results (in frame order within each stream) and one ``StreamEnd`` per stream; ``on_idle`` is
        called whenever none came for 0.1 s (e.g. to flush buffered output of a stalled live stream)."""
        self.started = time.perf_counter()
        for s in self.streams:
            t = threading.Thread(target=self._run_stream, args=(s,), name=f"gpufleet-video-{s.name}", daemon=True)
            self._threads.append(t)
            t.start()
        live = len(self.streams)
        while live:
            try:
                ev = self._out.get(timeout=0.1)
            except queue.Empty:
                if on_idle is not None:
                    on_idle()
                continue
            if isinstance(ev, StreamEnd):
                live -= 1
            yield ev

    def close(self, drain: bool = True) -> None:
        """Stop decoding (unless finished), join the threads and close the pool."""
        if not drain:
            self.stop.set()
            for s in self.streams:
                s.stop.set()
        for t in list(self._threads):
            t.join(timeout=None if drain else 5)
        if self.pool is not None:
            self.pool.close(drain=drain, timeout=None if drain else 5)

    def __enter__(self) -> VideoJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(drain=exc[0] is None)

    # -- one stream ---------------------------------------------------------------------------------------
    def _put(self, ev: Any, stop: threading.Event | None = None) -> bool:
        while True:
            try:
                self._out.put(ev, timeout=0.1)
                return True
            except queue.Full:
                if self.stop.is_set() or (stop is not None and stop.is_set()):
                    return False

    def _decoder_for(self, s: _Stream) -> tuple[str, str]:
        want = self.config.decoder
        if want == "cpu":
            return "cpu", "asked for"
        cuda = [d for d in self.devices if d.is_cuda]
        reason = (nvdec_available() or "") if cuda else "no CUDA device in use"
        if not reason and s.info is not None and s.info.codec not in NVDEC_CODECS:
            reason = f"NVDEC cannot decode {s.info.codec}"
        if not reason and is_url(s.spec):
            reason = "live streams are decoded with PyAV"
        if want == "nvdec":
            if reason:
                raise SourceError(f"{s.spec}: --decoder nvdec: {reason}")
            return "nvdec", "PyNvVideoCodec"
        return ("nvdec", "PyNvVideoCodec") if not reason else ("cpu", reason)

    def _probe_live(self, s: _Stream) -> VideoInfo:
        cfg = self.config
        delay = cfg.backoff_s
        for attempt in range(1, cfg.reconnect_attempts + 1):
            try:
                return probe(s.spec, timeout_s=cfg.timeout_s)
            except SourceError as exc:
                if attempt == cfg.reconnect_attempts or s.stop.is_set():
                    raise SourceError(f"{exc} (gave up after {attempt} attempts)") from exc
                log.warning("%s; retrying in %.1fs", exc, delay)
                s.reconnects += 1
                s.stop.wait(delay)
                delay = min(10.0, delay * 2)
        raise AssertionError("unreachable")

    def _n_segments(self, s: _Stream) -> int:
        cfg = self.config
        if cfg.segments:
            return cfg.segments
        ok = max(1, sum(1 for x in self.streams if x.error is None))
        slots = cfg.decoders_per_gpu * sum(d.is_cuda for d in self.devices) if s.decoder == "nvdec" \
            else len(self.devices)
        return max(1, slots // ok)

    def _run_stream(self, s: _Stream) -> None:
        t0 = time.perf_counter()
        status, error = "ok", None
        try:
            if s.error is not None:
                raise s.error
            if s.info is None:
                s.info = self._probe_live(s)
            s.decoder, s.note = self._decoder_for(s)
            segments = split(s.info, self._n_segments(s)) if not is_url(s.spec) else [Segment(0, 0, None)]
            s.segments = len(segments)
            stealable = self._stealable(s)
            if len(segments) == 1 and not stealable:
                self._run_segment(s, segments[0], lambda ev: self._put(ev, s.stop))
            else:
                self._run_split(s, segments, stealable)
            if self.stop.is_set():
                status = "interrupted"
        except BaseException as exc:  # noqa: BLE001 - reported as this stream's one-line error
            s.stop.set()
            status = "interrupted" if self.stop.is_set() and not isinstance(exc, SourceError) else "failed"
            error = str(exc) if isinstance(exc, GpufleetError) else f"{s.spec}: {type(exc).__name__}: {exc}"
            if status == "failed":
                log.debug("stream %s failed", s.name, exc_info=exc)
        info = s.info
        self._put(StreamEnd(
            stream=s.name, input=s.spec, status=status, error=error, frames=s.frames,
            elapsed_s=time.perf_counter() - t0, decoder=s.decoder, decoder_note=s.note, segments=s.segments,
            decode_s=s.decode_s, prepare_s=s.prepare_s, reconnects=s.reconnects,
            fps_in=info.fps if info is not None else 0.0))

    def _stealable(self, s: _Stream) -> bool:
        """Whether other decoders may take over parts of ``s``: a file with a keyframe index."""
        info = s.info
        return (self._spans.min_frames > 0 and info is not None and not is_url(s.spec) and not info.live
                and bool(info.frames) and bool(info.keyframes))

    def _run_split(self, s: _Stream, segments: list[Segment], stealable: bool) -> None:
        """Decode ``s`` as segments on threads of their own and emit their results in frame order (``_decode``;
        when ``stealable``, other threads may add spans of ``s`` to the merge, see ``_take_over``)."""
        limit = 2 * self.config.queue_size if self.keep_images else None
        merge = OrderedMerge([seg.start for seg in segments], limit=limit, stop_event=s.stop)
        for seg in segments:
            span = None
            if stealable:
                assert s.info is not None and seg.stop is not None
                span = self._spans.add(s, seg.start, seg.stop, s.info.keyframes, merge)
            t = threading.Thread(target=self._decode, args=(s, seg, merge, span),
                                 name=f"gpufleet-video-{s.name}-{seg.index}", daemon=True)
            self._threads.append(t)
            t.start()
        try:
            for ev in merge:
                if not self._put(ev, s.stop):
                    break
        except BaseException:
            s.stop.set()  # a span failed: the others stop too (this stream fails with its error)
            raise
        finally:
            if self.stop.is_set():
                s.stop.set()
            merge.wait_closed()

    def _decode(self, s: _Stream, seg: Segment | Span, merge: OrderedMerge, span: Span | None) -> None:
        """Decode one segment (or span) into ``merge``. Once its decoder has read its last frame, a span's
        thread hands the decoder's place on: a new thread decodes the back half of the longest span left, of
        any input (``_take_over``), while this one waits for its last results."""
        try:
            self._run_segment(s, seg, partial(merge.put, seg.start), span)
            error = None
        except BaseException as exc:  # noqa: BLE001 - raised where the merge reaches this span
            error = exc
        if span is not None:
            span.finish()  # (again, or failed or stopped:) nothing more is taken from it
        merge.close(seg.start, error)  # after finish: nothing may be taken from a span its merge saw closed

    def _take_over(self, span: Span) -> None:
        """``span``'s decoder read its last frame: start a thread on a span taken from another decoder."""
        span.finish()
        if self.stop.is_set():
            return
        new = self._spans.steal(lambda victim: not victim.owner.stop.is_set())
        if new is None or new.merge is None:
            return
        s: _Stream = new.owner
        with s.lock:
            s.segments += 1
        log.debug("a decoder took frames %d-%d of %s", new.start, new.stop, s.name)
        t = threading.Thread(target=self._decode, args=(s, new, new.merge, new),
                             name=f"gpufleet-video-{s.name}-{new.start}", daemon=True)
        self._threads.append(t)
        t.start()

    def _acquire(self, decoder: str) -> Any:
        if decoder != "nvdec":
            return None
        with self._load_lock:
            dev = min((d for d in self.devices if d.is_cuda), key=lambda d: (self._load[d.index], d.index))
            self._load[dev.index] += 1
        return dev

    def _release(self, dev: Any) -> None:
        if dev is not None:
            with self._load_lock:
                self._load[dev.index] -= 1

    def _source(self, s: _Stream, seg: Segment | Span, dev: Any, span: Span | None = None) -> Any:
        cfg, info = self.config, s.info
        assert info is not None
        if s.decoder == "nvdec":
            return NvdecSource(info, seg.start, seg.stop, gpu_id=dev.index, chunk=cfg.chunk or 32,
                               every_nth=cfg.every_nth, stop_event=s.stop, span=span)
        chunk = cfg.chunk or 8
        if is_url(s.spec):
            def reopen(_next_index: int) -> CpuSource:
                return CpuSource(info, chunk=chunk, every_nth=cfg.every_nth, stop_event=s.stop,
                                 timeout_s=cfg.timeout_s)

            return Reconnecting(reopen, attempts=cfg.reconnect_attempts, backoff_s=cfg.backoff_s,
                                stop_event=s.stop)
        return CpuSource(info, seg.start, seg.stop, chunk=chunk, every_nth=cfg.every_nth, stop_event=s.stop,
                         timeout_s=cfg.timeout_s, span=span)

    def _run_segment(self, s: _Stream, seg: Segment | Span, emit: Any, span: Span | None = None) -> None:
        assert self.pool is not None
        dev = self._acquire(s.decoder)
        try:
            source = self._source(s, seg, dev, span)
            chunks = iter(source)
            metas: deque[tuple[int, float, Any]] = deque()
            prepare, keep = self.preparer, self.keep_images
            sync = None
            on_stream: Callable[[], AbstractContextManager[Any]] = nullcontext
            if dev is not None:
                import torch

                own = getattr(source, "stream", None)  # the decoder's own CUDA stream (GPUFLEET_NVDEC_STREAMS=own)
                if own is not None:
                    sync, on_stream = own.synchronize, partial(torch.cuda.stream, own)
                else:
                    sync = torch.cuda.current_stream(torch.device(dev.torch)).synchronize

            def items() -> Iterator[Any]:
                for chunk in chunks:
                    t0 = time.perf_counter()
                    images = [f.image for f in chunk]
                    with on_stream():  # the stream the chunk was made on
                        batch = prepare(images) if prepare is not None else images
                    if sync is not None:
                        sync()  # the pool's workers read these tensors on their own CUDA streams
                    with s.lock:
                        s.prepare_s += time.perf_counter() - t0
                    for f, item in zip(chunk, batch, strict=True):
                        metas.append((f.index, f.pts, f.image if keep else None))
                        yield item
                    if s.stop.is_set():
                        return
                if span is not None:  # the decoder is done (and closed): its place goes to another span
                    self._take_over(span)

            limit = max(self.config.queue_size, 2 * (self.config.chunk or 8))
            # Frames decoded into a GPU's memory are served by that GPU's workers when it has any.
            where = dev.label if dev is not None else None
            try:
                for res in self.pool.map(items(), ordered=True, max_in_flight=limit, return_exceptions=True,
                                         device=where):
                    index, pts, image = metas.popleft()
                    err = f"{type(res).__name__}: {res}" if isinstance(res, BaseException) else None
                    if not emit(FrameResult(s.name, index, pts, None if err else res, image, err)):
                        break
                    with s.lock:
                        s.frames += 1
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # a generator source closes its decoder now, before its slot is freed
            with s.lock:
                s.decode_s += getattr(source, "decode_s", 0.0)
                s.reconnects += getattr(source, "reconnects", 0)
        finally:
            self._release(dev)
