"""Where frame results go: JSONL (one line per frame, in frame order) and an annotated video.

Both sinks are written by one thread, in frame order, and are valid files whenever they are closed: the
JSONL sink writes whole lines only, the video sink flushes its encoder and writes the mp4 index
(``moov``) in :meth:`VideoSink.close`, which the pipeline calls on success, error and Ctrl-C alike.

Boxes are drawn with torch on the GPU when frames are CUDA tensors (only the finished frame is copied to the
host for the encoder), with numpy otherwise. Encoders: ``cpu`` = libx264 via PyAV; ``nvenc`` = NVENC via
PyNvVideoCodec, muxed into mp4 by PyAV; ``auto`` tries NVENC where frames are on a GPU and falls back to
libx264, saying so (H100/H200 have no NVENC).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

__all__ = ["JsonlSink", "VideoSink", "draw_boxes", "encode_frames", "jsonable"]

log = logging.getLogger(__name__)

_COLOR = (255, 32, 32)


def jsonable(value: Any) -> Any:
    """Model results -> plain JSON values (tensors and arrays become lists or numbers)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays, torch tensors
        return value.tolist()
    return value


class JsonlSink:
    """``{"stream", "frame", "pts", "results"}`` per line; ``"error"`` instead of results for a failed frame.

    Lines are encoded with msgspec and written in blocks of whole lines (at least every
    :attr:`FLUSH_S` seconds, and on :meth:`close`), so a reader or a crash sees whole lines only; at thousands
    of frames a second a write per line cost the writing thread more than encoding did."""

    FLUSH_S = 0.2
    _BLOCK = 1 << 16

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("wb")
        self._buf = bytearray()
        self._encoder = msgspec.json.Encoder(enc_hook=_plain)
        self._flushed = time.monotonic()
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        self._encoder.encode_into(record, self._buf, -1)
        self._buf += b"\n"
        self.lines += 1
        if len(self._buf) >= self._BLOCK or time.monotonic() - self._flushed >= self.FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write the lines encoded so far."""
        if self._buf:
            self._fh.write(self._buf)
            self._fh.flush()
            self._buf.clear()
        self._flushed = time.monotonic()

    def close(self) -> None:
        if not self._fh.closed:
            try:
                self.flush()
            finally:
                self._fh.close()


def _plain(value: Any) -> Any:
    """msgspec's hook for what JSON lacks: numpy scalars and arrays, tensors (see :func:`jsonable`)."""
    out = jsonable(value)
    if out is value:
        raise NotImplementedError(f"cannot write {type(value).__name__} as JSON")
    return out


def _boxes(results: Any) -> list[list[int]]:
    if not isinstance(results, list):
        return []
    return [[int(v) for v in r["box"]] for r in results if isinstance(r, dict) and len(r.get("box", ())) == 4]


# A 3×5 bitmap font for the labels drawn above boxes: digits, '.', '-' (scores and class indices).
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
}
_SCALE = 2  # each font pixel is 2×2: 6×10 pixels a character


def _label(result: Any) -> str:
    if isinstance(result, dict):
        if isinstance(result.get("score"), (int, float)):
            return f"{result['score']:.2f}"
        if isinstance(result.get("class"), int):
            return str(result["class"])
    return ""


def _text_mask(text: str) -> np.ndarray:
    """A boolean (H, W) mask of ``text`` in the bitmap font (unknown characters are skipped)."""
    cols = []
    for ch in text:
        g = _GLYPHS.get(ch)
        if g is not None:
            cols.append(np.array([int(b) for b in g], dtype=bool).reshape(5, 3))
            cols.append(np.zeros((5, 1), dtype=bool))  # spacing
    if not cols:
        return np.zeros((0, 0), dtype=bool)
    mask = np.concatenate(cols, axis=1)
    return mask.repeat(_SCALE, axis=0).repeat(_SCALE, axis=1)


def draw_boxes(image: Any, results: Any, thickness: int = 2) -> Any:
    """A copy of ``image`` (numpy HWC or torch CHW, any device) with each result's ``box`` outlined and its
    score (or class index) written above it; on a CUDA tensor all drawing happens on the GPU."""
    boxes = _boxes(results)
    if isinstance(image, np.ndarray):
        out, h, w = image.copy(), image.shape[0], image.shape[1]
        color: Any = np.array(_COLOR, dtype=np.uint8)
    else:
        import torch

        out, h, w = image.clone(), image.shape[1], image.shape[2]
        color = torch.tensor(_COLOR, dtype=out.dtype, device=out.device).view(3, 1, 1)
    for x0, y0, x1, y1 in boxes:
        x0, x1 = max(0, min(w - 1, x0)), max(0, min(w, x1))
        y0, y1 = max(0, min(h - 1, y0)), max(0, min(h, y1))
        t = thickness
        for ys, xs in ((slice(y0, y0 + t), slice(x0, x1)), (slice(max(y0, y1 - t), y1), slice(x0, x1)),
                       (slice(y0, y1), slice(x0, x0 + t)), (slice(y0, y1), slice(max(x0, x1 - t), x1))):
            if isinstance(out, np.ndarray):
                out[ys, xs] = color
            else:
                out[:, ys, xs] = color
    labels = [_label(r) for r in results if isinstance(r, dict) and len(r.get("box", ())) == 4] \
        if isinstance(results, list) else []
    for (x0, y0, _, y1), text in zip(boxes, labels, strict=True):
        mask = _text_mask(text)
        mh, mw = mask.shape
        if not mh or mw > w:
            continue
        top = y0 - mh - 2 if y0 - mh - 2 >= 0 else y1 + 2  # above the box, else below it; never over the text
        if top + mh > h:
            continue
        left = max(0, min(w - mw, x0))
        if isinstance(out, np.ndarray):
            out[top:top + mh, left:left + mw][mask] = color
        else:
            import torch

            m = torch.from_numpy(mask).to(out.device, non_blocking=True)
            region = out[:, top:top + mh, left:left + mw]
            region[:, m] = color.view(3, 1).expand(3, int(mask.sum()))
    return out


def _host_rgb(image: Any) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image
    return image.permute(1, 2, 0).contiguous().cpu().numpy()


class VideoSink:
    """Annotated H.264 mp4 at ``fps``; sized by the first frame. ``encoder``: ``auto`` | ``nvenc`` | ``cpu``."""

    def __init__(self, path: str | Path, fps: float, encoder: str = "auto") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.wanted = fps, encoder
        self.encoder: str | None = None  # "libx264" or "nvenc" once open
        self.note = ""
        self.frames = 0
        self.draw_s = self.encode_s = 0.0
        self._container: Any = None
        self._stream: Any = None
        self._nvenc: Any = None
        self._raw: Any = None

    def _open(self, image: Any) -> None:
        on_gpu = not isinstance(image, np.ndarray) and image.is_cuda
        h, w = (image.shape[0], image.shape[1]) if isinstance(image, np.ndarray) else (image.shape[1], image.shape[2])
        if self.wanted in ("auto", "nvenc"):
            reason = "frames are on the CPU" if not on_gpu else None
            if reason is None:
                try:
                    self._open_nvenc(w, h, image.device.index or 0)
                    self.encoder = "nvenc"
                    return
                except Exception as exc:  # noqa: BLE001 - no NVENC on this GPU, or no PyNvVideoCodec
                    reason = f"NVENC unavailable ({exc})"
            if self.wanted == "nvenc":
                from gpufleet.video.sources import SourceError

                raise SourceError(f"{self.path}: --encoder nvenc: {reason}")
            self.note = str(reason)
            log.info("%s: %s: encoding with libx264 (PyAV)", self.path, self.note)
        import av

        self._container = av.open(str(self.path), mode="w")
        from fractions import Fraction

        self._stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        self._stream.width, self._stream.height = w // 2 * 2, h // 2 * 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"preset": "veryfast"}
        self.encoder = "libx264"

    def _open_nvenc(self, w: int, h: int, gpu: int) -> None:
        import PyNvVideoCodec as nvc

        self._nvenc = nvc.CreateEncoder(w, h, "ABGR", False, gpu_id=gpu, codec="h264", fps=round(self.fps), bf=0)
        self._raw_path = self.path.with_suffix(".h264.tmp")
        self._raw = self._raw_path.open("wb")
        self._size = (w, h)

    def write(self, image: Any, results: Any) -> None:
        if self.encoder is None:
            self._open(image)
        t0 = time.perf_counter()
        drawn = draw_boxes(image, results)
        t1 = time.perf_counter()
        if self._nvenc is not None:
            import torch

            rgba = torch.cat((drawn, torch.full_like(drawn[:1], 255))).permute(1, 2, 0).contiguous()
            self._raw.write(bytes(self._nvenc.Encode(rgba)))
        else:
            import av

            rgb = _host_rgb(drawn)[: self._stream.height, : self._stream.width]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self.frames
            self._container.mux(self._stream.encode(frame))
        self.frames += 1
        t2 = time.perf_counter()
        self.draw_s += t1 - t0
        self.encode_s += t2 - t1

    def close(self) -> None:
        """Flush the encoder and finish the file (the mp4 index is written here)."""
        t0 = time.perf_counter()
        try:
            if self._nvenc is not None:
                self._raw.write(bytes(self._nvenc.EndEncode()))
                self._raw.close()
                self._nvenc = None
                _remux(self._raw_path, self.path, self.fps)
            elif self._container is not None:
                try:
                    self._container.mux(self._stream.encode())
                finally:
                    self._container.close()
                    self._container = None
        finally:
            self.encode_s += time.perf_counter() - t0


def _remux(raw: Path, path: Path, fps: float) -> None:
    """Put an NVENC H.264 elementary stream into an mp4 container (no re-encoding)."""
    from fractions import Fraction

    import av

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(raw), format="h264") as src, av.open(str(path), mode="w") as dst:
        s_in = src.streams.video[0]
        s_out = dst.add_stream_from_template(s_in)
        s_out.time_base = 1 / rate
        for i, pkt in enumerate(p for p in src.demux(s_in) if p.size):
            pkt.stream = s_out
            pkt.pts = pkt.dts = i
            pkt.time_base = s_out.time_base
            dst.mux(pkt)
    os.unlink(raw)


def encode_frames(path: str | Path, frames: Any, fps: int = 30, gop: int = 30, codec: str = "libx264") -> int:
    """Encode RGB ``uint8`` HWC frames to an H.264 (or ``codec``) file with a keyframe every ``gop`` frames,
    so that it can be split into segments; returns the frame count. Used by the demo, tests and benchmarks."""
    import av

    count = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=fps, options={"g": str(gop), "keyint_min": str(gop)})
                stream.width, stream.height = frame.shape[1] // 2 * 2, frame.shape[0] // 2 * 2
                stream.pix_fmt = "yuv420p"
            rgb = np.ascontiguousarray(frame[: stream.height, : stream.width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            count += 1
        if stream is not None:
            container.mux(stream.encode())
    return count
