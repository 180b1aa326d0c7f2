"""Video sources: probe an input, then decode it (or one segment of it) into chunks of frames.

- :func:`probe` opens an input once with PyAV and, for files, scans its packets (no decoding) for the frame
  count, each frame's pts and the keyframes, which is what segment splitting needs.
- :class:`CpuSource` decodes with PyAV (``thread_type="AUTO"``); frames are RGB ``uint8`` HWC numpy arrays.
- :class:`NvdecSource` decodes with PyNvVideoCodec into GPU memory; a chunk's frames are views of one CUDA
  ``uint8`` ``[N, 3, H, W]`` tensor (taken over DLPack, no host copy; NV12 -> RGB on the GPU).
- :class:`Reconnecting` re-opens a live stream that drops, with exponential backoff.

Foreign errors (PyAV, PyNvVideoCodec) become :class:`SourceError` here, with one readable line.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

from gpufleet.config import env_choice
from gpufleet.errors import InputError

__all__ = ["Claims", "CpuSource", "Frame", "NvdecSource", "Reconnecting", "SourceError", "VideoInfo", "is_url", "probe"]

log = logging.getLogger(__name__)

NVDEC_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "vp8", "mpeg2video", "mpeg4", "mjpeg"})


class SourceError(InputError):
    """An input cannot be opened or decoded: missing, not a video, unsupported codec, never connected."""


class Claims(Protocol):
    """Where a source may read to: :class:`gpufleet.video.segments.Span`, whose end can come down while it runs."""

    def claim(self, index: int, want: int) -> int:
        """Reserve frames ``[index, index + n)`` and return ``n <= want`` (0: read no further)."""
        ...


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the stream, pts in seconds and the image (numpy HWC or torch CHW)."""

    index: int
    pts: float
    image: Any


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learnt about an input. ``pts`` holds every frame's pts (stream time base) in
    presentation order, ``keyframes`` the indices of keyframes; both are empty for live streams."""

    spec: str
    width: int
    height: int
    fps: float
    codec: str
    time_base: Fraction
    frames: int | None = None
    pts: tuple[int, ...] = ()
    keyframes: tuple[int, ...] = ()
    live: bool = False
    index_of: dict[int, int] = field(default_factory=dict, repr=False, compare=False)

    def seconds(self, index: int) -> float:
        if self.pts and 0 <= index < len(self.pts):
            return float(self.pts[index] * self.time_base)
        return index / self.fps if self.fps else 0.0


def is_url(spec: str) -> bool:
    """``rtsp://``, ``http://``, ``udp://`` ... (anything but a plain path or ``file:``)."""
    return "://" in spec and not spec.startswith("file:")


def _open_options(spec: str, timeout_s: float) -> dict[str, str]:
    if not is_url(spec):
        return {}
    us = str(int(timeout_s * 1e6))
    opts = {"rw_timeout": us}
    if spec.startswith("rtsp"):
        opts.update({"rtsp_transport": "tcp", "timeout": us})
    return opts


def open_container(spec: str, timeout_s: float = 10.0) -> Any:
    """``av.open`` with errors translated to one-line :class:`SourceError`s."""
    try:
        import av
    except ImportError as exc:
        raise SourceError("video input needs PyAV: pip install 'gpufleet[video]'") from exc
    if not is_url(spec) and not os.path.exists(spec):
        raise SourceError(f"{spec}: no such file")
    try:
        return av.open(spec, options=_open_options(spec, timeout_s), timeout=timeout_s if is_url(spec) else None)
    except av.error.InvalidDataError as exc:
        raise SourceError(f"{spec}: not a video (the container cannot be read)") from exc
    except (av.error.FFmpegError, OSError) as exc:
        what = "cannot connect" if is_url(spec) else "cannot open"
        raise SourceError(f"{spec}: {what}: {exc}") from exc


def _video_stream(container: Any, spec: str) -> Any:
    if not container.streams.video:
        raise SourceError(f"{spec}: not a video (no video stream)")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None or not ctx.name or ctx.width <= 0:
        name = ctx.name if ctx is not None else "unknown"
        raise SourceError(f"{spec}: unsupported codec {name!r} (PyAV/FFmpeg has no decoder for it)")
    return stream


def probe(spec: str, *, scan: bool = True, timeout_s: float = 10.0) -> VideoInfo:
    """Open ``spec`` and describe it; for files (``scan``) also read every packet's pts and keyframe flag."""
    container = open_container(spec, timeout_s)
    try:
        stream = _video_stream(container, spec)
        rate = stream.average_rate or stream.guessed_rate or Fraction(30)
        tb = stream.time_base or Fraction(1, 90000)
        live = is_url(spec) and not spec.startswith(("http://", "https://"))
        pts: list[int] = []
        keys: list[int] = []
        if scan and not live:
            try:
                for pkt in container.demux(stream):
                    if pkt.size == 0:
                        continue
                    p = pkt.pts if pkt.pts is not None else pkt.dts
                    if p is None:
                        continue
                    pts.append(p)
                    if pkt.is_keyframe:
                        keys.append(p)
            except Exception as exc:  # noqa: BLE001 - PyAV raises several kinds here
                raise SourceError(f"{spec}: cannot read packets: {exc}") from exc
            if not pts:
                raise SourceError(f"{spec}: not a video (no video packets)")
        order = sorted(set(pts))
        index_of = {p: i for i, p in enumerate(order)}
        return VideoInfo(spec=spec, width=stream.codec_context.width, height=stream.codec_context.height,
                         fps=float(rate), codec=stream.codec_context.name, time_base=tb,
                         frames=len(order) if order else (stream.frames or None), pts=tuple(order),
                         keyframes=tuple(sorted(index_of[k] for k in set(keys))), live=live, index_of=index_of)
    finally:
        container.close()


class CpuSource:
    """Decode ``info.spec`` frames ``[start, stop)`` with PyAV, in chunks of up to ``chunk`` frames.

    ``start`` must be a keyframe index (segments start at keyframes); the source seeks there and drops
    anything outside the range, so a segment's frames equal the same frames of a full decode. With ``span``,
    frames are claimed from it a chunk at a time and decoding ends where the span now ends.
    """

    def __init__(self, info: VideoInfo, start: int = 0, stop: int | None = None, *, chunk: int = 8,
                 every_nth: int = 1, stop_event: threading.Event | None = None, timeout_s: float = 10.0,
                 span: Claims | None = None) -> None:
        self.info, self.start, self.stop, self.chunk, self.every_nth = info, start, stop, chunk, every_nth
        self.span = span
        self.stop_event = stop_event or threading.Event()
        self.timeout_s = timeout_s
        self.decode_s = 0.0

    def __iter__(self) -> Iterator[list[Frame]]:
        info = self.info
        container = open_container(info.spec, self.timeout_s)
        try:
            stream = _video_stream(container, info.spec)
            stream.thread_type = "AUTO"  # frame + slice threads inside FFmpeg (the GIL is released there)
            if self.start > 0 and info.pts:
                container.seek(info.pts[self.start], stream=stream, backward=True, any_frame=False)
            chunk: list[Frame] = []
            counter = claimed = self.start
            t0 = time.perf_counter()
            try:
                for frame in container.decode(stream):
                    if info.index_of:
                        index = info.index_of.get(frame.pts if frame.pts is not None else -1)
                        if index is None or index < self.start:
                            continue
                    else:
                        index = counter
                    counter = index + 1
                    if self.stop is not None and index >= self.stop:
                        break
                    if self.span is not None and index >= claimed:
                        n = self.span.claim(index, self.chunk)
                        if not n:
                            break  # another decoder took the rest
                        claimed = index + n
                    if index % self.every_nth:
                        continue
                    pts = info.seconds(index) if info.pts else float(frame.time or index / (info.fps or 30))
                    chunk.append(Frame(index, pts, frame.to_ndarray(format="rgb24")))
                    if len(chunk) >= self.chunk:
                        self.decode_s += time.perf_counter() - t0
                        yield chunk
                        chunk = []
                        if self.stop_event.is_set():
                            return
                        t0 = time.perf_counter()
            except Exception as exc:  # noqa: BLE001 - FFmpeg errors mid-stream
                if isinstance(exc, SourceError):
                    raise
                raise SourceError(f"{info.spec}: decoding failed at frame {counter}: {exc}") from exc
            self.decode_s += time.perf_counter() - t0
            if chunk:
                yield chunk
        finally:
            container.close()


def nvdec_streams() -> str:
    """``GPUFLEET_NVDEC_STREAMS``: ``shared`` (the default: every NVDEC decoder, and the stacking and resizing of
    its chunks, on the device's default CUDA stream) or ``own`` (each decoder on a CUDA stream of its own; an
    experiment: one process's decoders then no longer wait for each other's GPU work)."""
    return env_choice("GPUFLEET_NVDEC_STREAMS", ("shared", "own"))


def nvdec_available() -> str | None:
    """``None`` if PyNvVideoCodec and a CUDA device are usable, else the reason they are not."""
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device"
        import PyNvVideoCodec  # noqa: F401
    except ImportError as exc:
        return f"PyNvVideoCodec is not installed ({exc.name})"
    except Exception as exc:  # noqa: BLE001 - a broken CUDA/driver install
        return f"PyNvVideoCodec does not load: {exc}"
    return None


def nv12_to_rgb(nv12: Any, height: int, width: int) -> Any:
    """NV12 ``[H*3/2, W]`` uint8 CUDA tensor -> RGB ``[3, H, W]`` uint8, BT.601 limited range, on the GPU."""
    import torch

    y = nv12[:height].float()
    uv = nv12[height:height + height // 2].view(height // 2, width // 2, 2).float()
    uv = uv.permute(2, 0, 1).repeat_interleave(2, 1).repeat_interleave(2, 2)
    c, d, e = (y - 16) * 1.164383, uv[0] - 128, uv[1] - 128
    rgb = torch.stack((c + 1.596027 * e, c - 0.391762 * d - 0.812968 * e, c + 2.017232 * d))
    return rgb.clamp_(0, 255).round_().to(torch.uint8)


class NvdecSource:
    """Decode frames ``[start, stop)`` on GPU ``gpu_id`` with PyNvVideoCodec's ``SimpleDecoder``.

    Each chunk is one CUDA tensor ``[N, 3, H, W]`` made by stacking the decoder's RGB planar surfaces
    (``torch.from_dlpack``, device to device): the decoder reuses its surfaces on the next call, so frames
    must not outlive it. NATIVE (NV12) output is converted with :func:`nv12_to_rgb`. With ``span``, frames are
    claimed from it a chunk at a time and decoding ends where the span now ends. ``stream`` is the CUDA
    stream the decoder and the stacking run on: ``None`` (the device's default stream) unless
    ``GPUFLEET_NVDEC_STREAMS=own``; work on a chunk belongs on it (``with torch.cuda.stream(source.stream)``).
    """

    def __init__(self, info: VideoInfo, start: int = 0, stop: int | None = None, *, gpu_id: int = 0,
                 chunk: int = 32, every_nth: int = 1, stop_event: threading.Event | None = None,
                 span: Claims | None = None) -> None:
        reason = nvdec_available()
        if reason:
            raise SourceError(f"{info.spec}: nvdec decoder unavailable: {reason}")
        self.info, self.start, self.stop, self.gpu_id = info, start, stop, gpu_id
        self.chunk, self.every_nth, self.span = chunk, every_nth, span
        self.stop_event = stop_event or threading.Event()
        self.decode_s = 0.0
        self.stream: Any = None
        if nvdec_streams() == "own":
            import torch

            self.stream = torch.cuda.Stream(torch.device("cuda", gpu_id))

    def _decoder(self) -> Any:
        import PyNvVideoCodec as nvc

        own = {"cuda_stream": self.stream.cuda_stream} if self.stream is not None else {}
        try:
            return nvc.SimpleDecoder(self.info.spec, gpu_id=self.gpu_id, use_device_memory=True,
                                     output_color_type=nvc.OutputColorType.RGBP, **own)
        except Exception as exc:  # noqa: BLE001 - PyNvVideoCodec raises plain RuntimeErrors
            raise SourceError(f"{self.info.spec}: nvdec cannot open it ({self.info.codec}): {exc}") from exc

    def __iter__(self) -> Iterator[list[Frame]]:
        import torch

        info = self.info
        dev = torch.device("cuda", self.gpu_id)
        dec = self._decoder()
        stop = self.stop if self.stop is not None else (info.frames or 1 << 62)
        index = self.start
        try:
            if self.start:
                dec.seek_to_index(self.start)
            while index < stop and not self.stop_event.is_set():
                want = min(self.chunk, stop - index)
                if self.span is not None:
                    want = self.span.claim(index, want)
                    if not want:
                        break  # another decoder took the rest
                t0 = time.perf_counter()
                try:
                    got = dec.get_batch_frames(want)
                except Exception as exc:  # noqa: BLE001
                    raise SourceError(f"{info.spec}: nvdec failed at frame {index}: {exc}") from exc
                if not got:
                    break
                with torch.cuda.device(dev), torch.cuda.stream(self.stream):  # None: the current stream
                    planes = [torch.from_dlpack(f) for f in got]
                    if planes[0].dim() == 2:  # NATIVE NV12 surface
                        planes = [nv12_to_rgb(p, info.height, info.width) for p in planes]
                    keep = [i for i in range(len(planes)) if (index + i) % self.every_nth == 0]
                    batch = torch.stack([planes[i] for i in keep]) if keep else None  # copies: surfaces get reused
                self.decode_s += time.perf_counter() - t0
                if batch is not None:
                    yield [Frame(index + i, info.seconds(index + i), batch[j]) for j, i in enumerate(keep)]
                index += len(got)
        finally:
            del dec


class Reconnecting:
    """Iterate ``make()``'s chunks; when opening or reading fails, wait (``backoff_s`` doubling up to
    ``max_backoff_s``) and open again, up to ``attempts`` failures in a row. Frame indices keep counting
    across reconnects. The last error is raised once the attempts are used up ("never connects")."""

    def __init__(self, make: Callable[[int], Any], *, attempts: int = 5, backoff_s: float = 0.5,
                 max_backoff_s: float = 10.0, stop_event: threading.Event | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.make, self.attempts, self.backoff_s, self.max_backoff_s = make, attempts, backoff_s, max_backoff_s
        self.stop_event = stop_event or threading.Event()
        self._sleep = sleep or self.stop_event.wait
        self.reconnects = 0
        self.decode_s = 0.0

    def __iter__(self) -> Iterator[list[Frame]]:
        failures, next_index, delay = 0, 0, self.backoff_s
        while not self.stop_event.is_set():
            source = None
            try:
                source = self.make(next_index)
                for chunk in source:
                    failures, delay = 0, self.backoff_s
                    shifted = [Frame(next_index + i, f.pts, f.image) for i, f in enumerate(chunk)]
                    next_index += len(chunk)
                    yield shifted
                self.decode_s += getattr(source, "decode_s", 0.0)
                return  # the stream ended normally
            except SourceError as exc:
                self.decode_s += getattr(source, "decode_s", 0.0)
                failures += 1
                if failures >= self.attempts:
                    raise SourceError(f"{exc} (gave up after {failures} attempts)") from exc
                log.warning("%s; reconnecting in %.1fs (attempt %d of %d)", exc, delay, failures + 1, self.attempts)
                self.reconnects += 1
                self._sleep(delay)
                delay = min(self.max_backoff_s, delay * 2)
