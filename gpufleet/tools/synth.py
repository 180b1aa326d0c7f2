"""Deterministic synthetic data with ground truth, for tests, demos and benchmarks (PIL and numpy only).

- ``text_image``: a document-like crop of black text on white, rotated by 0/90/180/270 degrees
  (ground truth for the ``orientation`` model).
- ``moving_text_frames``: video frames with text lines moving across them, with each line's exact box
  (ground truth for the ``textdet`` model); ``write_video`` encodes them with PyAV.
- ``iou``, ``box_recall``: score predicted boxes against ground truth.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["WORDS", "box_recall", "coverage", "iou", "moving_text_frames", "random_text", "text_image", "write_video"]

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]

WORDS = (
    "the quick brown fox jumps over lazy dog invoice total amount date number page report table figure "
    "shipping address customer order price quantity account balance payment due summary section chapter "
    "model server batch device memory stream frame result value index field record document letter "
    "2024 17 350 42.50 No. ID: Ref Tel. Fax Email www GPU fleet alpha beta gamma delta"
).split()

_fonts: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in scalable font (Pillow >= 10.1), cached per size."""
    if size not in _fonts:
        _fonts[size] = ImageFont.load_default(size=size)
    return _fonts[size]


def random_text(rng: random.Random, n_words: int) -> str:
    """``n_words`` words drawn from ``WORDS`` with ``rng``."""
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def text_image(
    text: str | None = None, size: tuple[int, int] = (320, 240), angle: int = 0, seed: int = 0
) -> Image.Image:
    """Black text on white like a scanned document crop, rendered upright at ``size`` then rotated.

    ``angle`` (0/90/180/270) is the clockwise rotation applied, which is the label the ``orientation`` model
    predicts (its class "90" is text turned 90 degrees clockwise); for 90 and 270 the result is ``size``
    transposed. ``text=None`` draws random words. Text fills the page like a crop of a longer document: a
    single paragraph is repeated and wrapped to the width, lines separated by newlines are cycled. Filling
    matters: the model sees only the centre crop, and a short line in a corner of a blank page reads as 0.
    """
    if angle not in (0, 90, 180, 270):
        raise ValueError(f"angle must be 0, 90, 180 or 270, got {angle!r}")
    rng = random.Random(seed)
    width, height = size
    font_size = max(10, round(min(width, height) * rng.uniform(0.07, 0.1)))
    font = _font(font_size)
    margin = rng.randint(4, max(5, width // 20))
    line_h = round(font_size * rng.uniform(1.25, 1.5))
    n_lines = max(1, (height - margin - margin // 2 - font_size) // line_h + 1)
    if text and "\n" not in text:  # repeat a paragraph so that it fills every line
        repeats = 1 + int(n_lines * width / max(1.0, font.getlength(text + " ")))
        text = " ".join([text] * repeats)
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    ink = (rng.randint(0, 40),) * 3
    y = margin
    lines = _wrap(text if text else random_text(rng, 12), font, width - 2 * margin)
    i = 0
    while y + font_size <= height - margin // 2 and lines:
        draw.text((margin, y), lines[i % len(lines)], font=font, fill=ink)
        y += line_h
        i += 1
        if text is None and i % len(lines) == 0:  # keep random pages varied
            lines = _wrap(random_text(rng, 12), font, width - 2 * margin)
    return img.rotate(-angle, expand=True, fillcolor=(255, 255, 255)) if angle else img


def _ink_box(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> Box:
    """Tight box of the pixels ``text`` inks when drawn at (0, 0)."""
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (int(right) + 4, int(bottom) + 4), 0)
    ImageDraw.Draw(canvas).text((0, 0), text, font=font, fill=255)
    box = canvas.getbbox()
    return box if box else (0, 0, 0, 0)


def moving_text_frames(
    n_frames: int, size: tuple[int, int] = (640, 360), n_lines: int = 3, seed: int = 0
) -> Iterator[tuple[np.ndarray, list[Box]]]:
    """Frames (RGB ``uint8`` HWC) with ``n_lines`` dark text lines gliding over a light background.

    Each line lives in its own horizontal band, moves back and forth (bouncing at the edges, so it always
    stays whole inside the frame) and bobs a little vertically. Yields ``(frame, boxes)`` where ``boxes``
    are the exact ink boxes ``(x0, y0, x1, y1)`` of the lines (exclusive ``x1``/``y1``), in line order.
    """
    rng = random.Random(seed)
    width, height = size
    band = height / n_lines
    font_size = max(10, round(min(band * 0.42, width / 14)))
    font = _font(font_size)
    lines = []
    for i in range(n_lines):
        text = random_text(rng, 2)
        while font.getlength(text) < width * rng.uniform(0.3, 0.55):
            text = f"{text} {rng.choice(WORDS)}"
        while len(text.split()) > 1 and font.getlength(text) > width * 0.7:
            text = text.rsplit(" ", 1)[0]
        ink = _ink_box(text, font)
        travel = max(1, width - (ink[2] - ink[0]) - 8)
        bob = max(0, int(band - (ink[3] - ink[1]) - 4) // 2)
        lines.append(
            {
                "text": text,
                "ink": ink,
                "travel": travel,
                "phase": rng.uniform(0, 2 * travel),
                "speed": rng.uniform(2, 6) * width / 640 * rng.choice((-1, 1)),
                "y": int(i * band + (band - (ink[3] - ink[1])) / 2) - ink[1],
                "bob": min(bob, 6),
                "color": tuple(rng.randint(0, 60) for _ in range(3)),
            }
        )
    top = np.array([rng.randint(200, 245) for _ in range(3)], dtype=np.float32)
    bottom = np.array([rng.randint(200, 245) for _ in range(3)], dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    background = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).astype(np.uint8)
    for f in range(n_frames):
        img = Image.fromarray(background.copy())
        draw = ImageDraw.Draw(img)
        boxes: list[Box] = []
        for line in lines:
            pos = (line["phase"] + f * line["speed"]) % (2 * line["travel"])
            x = 4 + (pos if pos < line["travel"] else 2 * line["travel"] - pos) - line["ink"][0]
            x = int(round(x))
            y = line["y"] + int(round(line["bob"] * np.sin(f / 9 + line["phase"])))
            draw.text((x, y), line["text"], font=font, fill=line["color"])
            x0, y0, x1, y1 = line["ink"]
            boxes.append((x + x0, y + y0, x + x1, y + y1))
        yield np.asarray(img), boxes


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: int = 30) -> int:
    """Encode RGB ``uint8`` frames to ``path`` (H.264, yuv420p) with PyAV; returns the frame count."""
    import av  # lazy: video support is an optional extra

    count = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height = frame.shape[1] // 2 * 2, frame.shape[0] // 2 * 2
                stream.pix_fmt = "yuv420p"
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[: stream.height, : stream.width]), "rgb24")
            container.mux(stream.encode(vf))
            count += 1
        if stream is not None:
            container.mux(stream.encode())
    log.debug("wrote %d frames to %s", count, path)
    return count


def _area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def coverage(gt: Sequence[float], preds: Iterable[Sequence[float]]) -> float:
    """Fraction of ``gt``'s area covered by the union of ``preds`` (rasterised on ``gt``'s integer grid)."""
    x0, y0 = int(np.floor(gt[0])), int(np.floor(gt[1]))
    w, h = int(np.ceil(gt[2])) - x0, int(np.ceil(gt[3])) - y0
    if w <= 0 or h <= 0:
        return 0.0
    mask = np.zeros((h, w), dtype=bool)
    for p in preds:
        px0, py0 = max(0, int(np.floor(p[0])) - x0), max(0, int(np.floor(p[1])) - y0)
        px1, py1 = min(w, int(np.ceil(p[2])) - x0), min(h, int(np.ceil(p[3])) - y0)
        if px1 > px0 and py1 > py0:
            mask[py0:py1, px0:px1] = True
    return float(mask.mean())


def box_recall(pred_boxes: Sequence[Sequence[float]], gt_boxes: Sequence[Sequence[float]], iou: float = 0.5) -> float:
    """Fraction of ground-truth boxes found by the predictions.

    Rule: a GT box counts as found when one predicted box overlaps it with IoU >= ``iou``, or when the
    predicted boxes that overlap it (detectors split lines into words) together cover >= 50% of its area
    without straying far from it (each counted box has >= 50% of its own area inside the GT box grown
    by half its height). An empty GT list gives 1.0.
    """
    if not gt_boxes:
        return 1.0
    found = 0
    for gt in gt_boxes:
        if any(_iou(p, gt) >= iou for p in pred_boxes):
            found += 1
            continue
        pad = (gt[3] - gt[1]) / 2
        grown = (gt[0] - pad, gt[1] - pad, gt[2] + pad, gt[3] + pad)
        inside = [p for p in pred_boxes if _area(p) > 0 and _inter(p, grown) / _area(p) >= 0.5]
        if coverage(gt, inside) >= 0.5:
            found += 1
    return found / len(gt_boxes)


def _inter(a: Sequence[float], b: Sequence[float]) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


_iou = iou  # box_recall's ``iou`` argument shadows the function
