"""Models on video frames: resolve ``--model``, and prepare each decoded chunk on the frames' device.

A chunk of frames becomes one ``uint8`` ``[N, 3, H, W]`` torch tensor (CUDA straight from NVDEC, or CPU from
PyAV without a copy) and is resized / normalised there in one batched call:

- ``textdet`` runs as :class:`TextDetVideo`: letterbox, BGR and ``(x/255 - 0.5)/0.5`` done with torch on the
  frames' device; on a CUDA device with the PyTorch runtime the detector runs on the tensors directly, so the
  only host copy is the probability map the (CPU) box post-processing needs.
- a :class:`~gpufleet.models.torch_model.TorchModel` with a 3-d ``example_shape`` (e.g. ``ImageClassifier``)
  gets frames resized to that shape on the device, in its ``example_dtype``.
- anything else gets the frames as they are, one per item.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gpufleet.models.zoo.textdet import DetInput, DetMap, TextDetModel

__all__ = ["TextDetVideo", "as_batch", "det_input_hw", "make_preparer", "resolve_model"]


def as_batch(images: Sequence[Any]) -> Any:
    """Frames (numpy HWC RGB or torch CHW) -> one ``uint8`` ``[N, 3, H, W]`` tensor on their device."""
    import torch

    first = images[0]
    if isinstance(first, np.ndarray):
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return torch.stack(list(images))


def det_input_hw(width: int, height: int, max_side: int = 960) -> tuple[int, int]:
    """The detector's input size for ``width`` x ``height`` frames: the frame scaled to fit ``max_side``,
    rounded up to multiples of 32 (the DB detector's stride)."""
    scale = min(1.0, max_side / max(width, height))
    return (max(32, math.ceil(height * scale / 32) * 32), max(32, math.ceil(width * scale / 32) * 32))


class TextDetVideo(TextDetModel):
    """:class:`TextDetModel` fed by batched torch preprocessing on the frames' device (see module docs)."""

    def setup(self, device: Any = None) -> None:
        super().setup(device)
        self._device = device

    def prepare_frames(self, images: Sequence[Any]) -> list[DetInput]:
        """Letterbox a chunk of frames into float32 ``[3, H, W]`` tensors on their device."""
        import torch
        import torch.nn.functional as F

        x = as_batch(images)
        n, _, h, w = x.shape
        H, W = self.input_hw
        scale = min(H / h, W / w)
        nh, nw = max(1, min(H, round(h * scale))), max(1, min(W, round(w * scale)))
        y = x.float()
        if (nh, nw) != (h, w):
            y = F.interpolate(y, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        out = torch.zeros((n, 3, H, W), dtype=torch.float32, device=x.device)
        out[:, :, :nh, :nw] = y.flip(1).mul_(2 / 255).sub_(1)  # BGR, (x / 255 - 0.5) / 0.5 as rapidocr
        return [DetInput(t, scale, (h, w)) for t in out.unbind(0)]

    def preprocess(self, item: Any) -> DetInput:
        if isinstance(item, DetInput):
            return item
        return super().preprocess(item)

    def predict(self, batch: list[Any]) -> list[DetMap]:
        if not batch or not isinstance(batch[0], DetInput) or isinstance(batch[0].array, np.ndarray):
            return super().predict(batch)
        import torch

        if self.runner is None:
            self.setup(None)
        assert self.runner is not None
        module = getattr(self.runner, "_module", None)
        dev = torch.device(self.runner.device.torch)
        with torch.inference_mode():
            x = torch.stack([b.array.to(dev, non_blocking=True) for b in batch])
            if module is not None and dev.type == "cuda":  # stay on the GPU: no host round trip for the input
                dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.runner.device.precision)
                with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                    maps = module(x)
                maps = (maps[0] if isinstance(maps, (list, tuple)) else maps)[:, 0].float().cpu().numpy()
            else:
                maps = self.runner(x.cpu().numpy())[:, 0]
        out = []
        for m, b in zip(maps, batch, strict=True):
            h, w = (min(m.shape[i], math.ceil(b.size[i] * b.scale)) for i in (0, 1))
            out.append(DetMap(np.ascontiguousarray(m[:h, :w]), b.scale, b.size))
        return out


def _resize_preparer(hw: tuple[int, int], dtype: Any) -> Callable[[Sequence[Any]], list]:
    import torch
    import torch.nn.functional as F

    def prepare(images: Sequence[Any]) -> list:
        x = as_batch(images)
        y = F.interpolate(x.float(), size=hw, mode="bilinear", antialias=True, align_corners=False)
        if dtype == torch.uint8:
            y = y.round_().clamp_(0, 255).to(torch.uint8)
        else:
            y = y.div_(255).to(dtype)
        return list(y.unbind(0))

    return prepare


def make_preparer(model: Any) -> Callable[[Sequence[Any]], list] | None:
    """The batched frame preparation for ``model``, or ``None`` (frames go in as decoded)."""
    if callable(getattr(model, "prepare_frames", None)):
        return model.prepare_frames
    shape = getattr(model, "example_shape", None)
    if shape is not None and len(shape) == 3 and shape[0] in (1, 3):
        return _resize_preparer((int(shape[1]), int(shape[2])), getattr(model, "example_dtype", None))
    return None


def resolve_model(model: Any, *, runtime: str = "auto", size: tuple[int, int] | None = None) -> Any:
    """The model a video job serves, through :func:`gpufleet.models.resolve.resolve_model` (embedded names,
    ``"pkg.module:attr"``, ``"path/file.py:attr"``, model objects); classes are instantiated here (the frames'
    preparation reads the instance) and the text detector becomes a :class:`TextDetVideo`.

    ``size`` (width, height) of the first input sizes the detector's letterbox.
    """
    from gpufleet.models.resolve import resolve_model as resolve

    hw = det_input_hw(*size) if size else (384, 640)
    model = resolve(model, runtime=runtime, input_hw=hw)
    if isinstance(model, type):
        model = model()
    if isinstance(model, TextDetModel) and not isinstance(model, TextDetVideo):
        video = TextDetVideo.__new__(TextDetVideo)
        video.__dict__.update(copy.copy(model.__dict__))
        return video
    return model


def on_device(model: Any) -> Any:
    """``model`` with its batches moved to its worker's device first: with several GPUs a stream decoded on
    one GPU may be batched on another. Only needed for tensor inputs of models that don't move them."""
    import torch

    base = type(model)
    if isinstance(model, TextDetVideo) or not hasattr(base, "predict") or getattr(base, "_moves_inputs", False):
        return model

    def move(self: Any, batch: list) -> list:
        dev = getattr(self, "_video_device", None)
        if dev is None or not batch or not isinstance(batch[0], torch.Tensor):
            return batch
        return [t.to(dev, non_blocking=True) if t.device != dev else t for t in batch]

    ns: dict[str, Any] = {"_moves_inputs": True}

    def setup(self: Any, device: Any) -> None:
        self._video_device = torch.device(device.torch) if getattr(device, "is_cuda", False) else None
        base.setup(self, device)

    ns["setup"] = setup
    ns["predict"] = lambda self, batch: base.predict(self, move(self, batch))
    if callable(getattr(base, "launch", None)):
        ns["launch"] = lambda self, batch: base.launch(self, move(self, batch))
    wrapped = copy.copy(model)
    wrapped.__class__ = type(base.__name__, (base,), ns)
    return wrapped
