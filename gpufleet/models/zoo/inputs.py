"""Turn the input kinds the embedded models accept into one RGB ``uint8`` HWC numpy array.

Accepted: ``PIL.Image``, numpy ``uint8`` HW / HWC (RGB; 1, 3 or 4 channels), torch ``uint8`` tensors
(CHW or HWC), encoded image bytes (JPEG, PNG, ...), and ``{"image": base64 str}`` (JSON requests).
Anything else raises ``InputError`` with what was expected. Also the JPEG checks the classifiers share with
their torch-free front end (:func:`complete_jpeg`, :func:`jpeg_decode_where`).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from gpufleet.config import env_choice
from gpufleet.errors import InputError

__all__ = ["EXPECTED", "complete_jpeg", "image_bytes", "jpeg_decode_where", "to_pil", "to_rgb_array"]

EXPECTED = "a PIL image, a uint8 HWC RGB array or tensor, encoded image bytes, or {'image': <base64 str>}"


def _decode(data: bytes) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot decode {len(data)} bytes as an image (JPEG, PNG, ...): {exc}") from exc
    return img


def _from_array(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise InputError(f"image array must be uint8, got {arr.dtype}; expected {EXPECTED}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"image array must be HxW or HxWxC with C in 1/3/4, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def image_bytes(item: Any) -> bytes | None:
    """The encoded image of ``item`` when it is bytes or ``{"image": base64}``; ``None`` for other kinds."""
    if isinstance(item, dict):
        if "image" not in item:
            raise InputError(f"dict input needs an 'image' key with a base64 string, got keys {sorted(item)}")
        item = item["image"]
        if not isinstance(item, (str, bytes)):
            raise InputError(f"'image' must be a base64 string, got {type(item).__name__}")
        try:
            return base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"'image' is not valid base64: {exc}") from exc
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    return None


def to_rgb_array(item: Any) -> np.ndarray:
    """``item`` as an RGB ``uint8`` array of shape ``(H, W, 3)``; ``InputError`` if it is not an image."""
    data = image_bytes(item)
    if data is not None:
        item = _decode(data)
    if isinstance(item, Image.Image):
        return np.asarray(item.convert("RGB"))
    if type(item).__module__.startswith("torch"):  # torch tensors, without importing torch here
        tensor = item.detach().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4) and tensor.shape[2] not in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)  # CHW -> HWC
        item = tensor.contiguous().numpy()
    if isinstance(item, np.ndarray):
        return _from_array(item)
    raise InputError(f"unsupported input of type {type(item).__name__}; expected {EXPECTED}")


def to_pil(item: Any) -> Image.Image:
    """``item`` as an RGB ``PIL.Image`` (no copy when it already is one)."""
    if isinstance(item, Image.Image) and item.mode == "RGB":
        return item
    return Image.fromarray(to_rgb_array(item))


_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"


def jpeg_decode_where() -> str:
    """``GPUFLEET_JPEG_DECODE``: ``engine`` (the default: a GPU engine decodes JPEGs in batches) or ``frontend``."""
    return env_choice("GPUFLEET_JPEG_DECODE", ("engine", "frontend"))


def decode_ahead() -> str:
    """``GPUFLEET_DECODE_AHEAD`` (a GPU engine's JPEG decoding): ``0`` (the default: in the batch's launch),
    ``1`` (one batch ahead on a side thread) or ``eager`` (on that thread as the JPEGs come)."""
    return env_choice("GPUFLEET_DECODE_AHEAD", ("0", "1", "eager"))


def complete_jpeg(data: bytes) -> bytes:
    """``data`` when it is a whole JPEG (starts with FFD8, ends with FFD9, zero padding allowed), else InputError."""
    if not (data.startswith(_SOI) and data.rstrip(b"\x00").endswith(_EOI)):
        raise InputError(f"image is not a complete JPEG ({len(data)} bytes; JPEG starts with FFD8, ends with FFD9)")
    return data
