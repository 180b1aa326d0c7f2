"""``textdet``: the PP-OCRv4 DB text detector; results are text boxes in the original image's pixels.

The model is ``ch_PP-OCRv4_det_infer.onnx`` from the ``rapidocr-onnxruntime`` wheel (Apache-2.0). Its
preprocessing is reproduced without OpenCV (``ch_ppocr_det/utils.py``, ``config.yaml``): BGR, bilinear
resize to multiples of 32, ``(x/255 - 0.5) / 0.5``. Unlike rapidocr, every item is letterboxed to one fixed
size per model instance (scaled to fit, placed top-left, padding 0 after normalisation) so that items of a
batch stack; the scale is kept per item. The DB post-processing uses connected components (scipy) and
axis-aligned boxes instead of OpenCV contours and pyclipper polygons.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from gpufleet.devices.device import Device
from gpufleet.errors import ConfigError
from gpufleet.models.base import Model
from gpufleet.models.zoo.inputs import to_pil
from gpufleet.models.zoo.locate import textdet_onnx
from gpufleet.models.zoo.runner import Runner, check_runtime

__all__ = ["DetInput", "DetMap", "TextDetModel"]

log = logging.getLogger(__name__)


class DetInput(NamedTuple):
    """A preprocessed item: the letterboxed ``[3, H, W]`` float32 array and how to map back."""

    array: np.ndarray
    scale: float  # model pixels per original pixel
    size: tuple[int, int]  # original (height, width)


class DetMap(NamedTuple):
    """A predicted item: the text probability map over the image's part of the input, and how to map back."""

    prob: np.ndarray  # float32 [h, w], h = ceil(height * scale)
    scale: float
    size: tuple[int, int]


class TextDetModel(Model):
    """Text detector; each result is a list of ``{"box": [x0, y0, x1, y1], "score": 0.87}``.

    >>> model = TextDetModel(runtime="onnx", input_hw=(384, 640))
    >>> model.setup(None)
    >>> from gpufleet.tools.synth import moving_text_frames
    >>> frame, truth = next(moving_text_frames(1))
    >>> boxes = model.postprocess(model.predict([model.preprocess(frame)])[0])
    """

    def __init__(
        self,
        runtime: str = "auto",
        input_size: int = 640,
        *,
        input_hw: tuple[int, int] | None = None,
        thresh: float = 0.3,
        box_thresh: float = 0.5,
        unclip_ratio: float = 1.6,
        min_size: int = 3,
        max_candidates: int = 1000,
        use_dilation: bool = True,
    ) -> None:
        self.runtime = check_runtime(runtime)
        hw = tuple(input_hw) if input_hw is not None else (input_size, input_size)
        if len(hw) != 2 or any(not isinstance(v, int) or v < 32 or v % 32 for v in hw):
            raise ConfigError(f"input size must be positive multiples of 32 (H, W); got {hw!r}")
        if not 0 < thresh < 1 or not 0 <= box_thresh < 1:
            raise ConfigError(f"thresh and box_thresh must lie in (0, 1); got {thresh!r}, {box_thresh!r}")
        self.input_hw: tuple[int, int] = (int(hw[0]), int(hw[1]))
        self.thresh, self.box_thresh, self.unclip_ratio = thresh, box_thresh, unclip_ratio
        self.min_size, self.max_candidates, self.use_dilation = min_size, max_candidates, use_dilation
        self.runner: Runner | None = None

    def setup(self, device: Device | None = None) -> None:
        """Load the model for ``device`` (CPU when ``None``) and warm it up at the input size."""
        self.runner = Runner(textdet_onnx(), self.runtime, device)
        self.runner(np.zeros((1, 3, *self.input_hw), dtype=np.float32))
        log.info("textdet (%s, %dx%d) ready on %s", self.runner.runtime, *self.input_hw, self.runner.device.label)

    def preprocess(self, item: Any) -> DetInput:
        """An image (PIL, RGB array or tensor, bytes, ``{"image": b64}``) -> letterboxed ``DetInput``."""
        img = to_pil(item)
        w, h = img.size
        H, W = self.input_hw
        scale = min(H / h, W / w)
        nw, nh = max(1, min(W, round(w * scale))), max(1, min(H, round(h * scale)))
        resized = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.float32)
        out = np.zeros((3, H, W), dtype=np.float32)
        # BGR, (x / 255 - 0.5) / 0.5 as rapidocr's DetPreProcess
        out[:, :nh, :nw] = (resized[:, :, ::-1] * np.float32(2 / 255) - 1).transpose(2, 0, 1)
        return DetInput(out, scale, (h, w))

    def predict(self, batch: list[Any]) -> list[DetMap]:
        """Text probability maps, one per item, cropped to the image's part of the letterbox."""
        if self.runner is None:
            self.setup(None)
        assert self.runner is not None
        if not batch:
            return []
        items = [x if isinstance(x, DetInput) else self.preprocess(x) for x in batch]
        maps = self.runner(np.stack([x.array for x in items]))[:, 0]
        out = []
        for m, x in zip(maps, items, strict=True):
            h, w = (min(m.shape[i], math.ceil(x.size[i] * x.scale)) for i in (0, 1))
            out.append(DetMap(np.ascontiguousarray(m[:h, :w]), x.scale, x.size))
        return out

    def postprocess(self, output: DetMap) -> list[dict[str, Any]]:
        """DB post-processing -> boxes ``[x0, y0, x1, y1]`` in original pixels, best score first."""
        from scipy import ndimage

        prob, scale, (height, width) = output
        mask = prob > self.thresh
        if self.use_dilation:  # rapidocr dilates with a 2x2 kernel
            mask = ndimage.binary_dilation(mask, structure=np.ones((2, 2), dtype=bool))
        labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        results: list[dict[str, Any]] = []
        for index, sl in enumerate(ndimage.find_objects(labels)[: self.max_candidates], start=1):
            if sl is None:
                continue
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            if min(x1 - x0, y1 - y0) < self.min_size:
                continue
            component = labels[sl] == index
            score = float(prob[sl][component].mean())
            if score < self.box_thresh:
                continue
            # DB "unclip": grow by area * ratio / perimeter so the box covers the whole text, not its core
            bw, bh = x1 - x0, y1 - y0
            d = bw * bh * self.unclip_ratio / (2 * (bw + bh))
            if min(bw, bh) + 2 * d < self.min_size + 2:
                continue
            box = [
                int(np.clip(round((x0 - d) / scale), 0, width)),
                int(np.clip(round((y0 - d) / scale), 0, height)),
                int(np.clip(round((x1 + d) / scale), 0, width)),
                int(np.clip(round((y1 + d) / scale), 0, height)),
            ]
            if box[2] - box[0] > 3 and box[3] - box[1] > 3:
                results.append({"box": box, "score": score})
        results.sort(key=lambda r: r["score"], reverse=True)
        return results
