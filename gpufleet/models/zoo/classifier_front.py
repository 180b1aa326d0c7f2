"""The embedded classifiers in an HTTP front end, without PyTorch while the engine decodes the JPEGs.

A front end of ``gpufleet serve resnet50`` only checks each JPEG and forwards its bytes when the engine decodes
on its GPUs (the default): :class:`ClassifierFrontEnd` does that without importing torch (about 0.5 GB of
memory and 2 s of CPU per front-end process). Where the front end decodes itself (a CPU engine,
``GPUFLEET_JPEG_DECODE=frontend``) or an array needs resizing, it hands over to the classifier's own
``preprocess``, importing torch then (once, ~2 s).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from gpufleet.devices.device import Device
from gpufleet.models.zoo.inputs import complete_jpeg, image_bytes, jpeg_decode_where, to_rgb_array

__all__ = ["ClassifierFrontEnd"]


class ClassifierFrontEnd:
    """What a front end runs for an embedded classifier (``arch``: ``resnet50`` ...): the classifier's
    ``preprocess`` as a front end of that engine runs it, importing torch only where it decodes itself."""

    frontend_preprocess = True

    def __init__(self, arch: str, image_size: int = 224) -> None:
        self.arch, self.image_size = arch, image_size
        self._engine_decodes = False
        self._devices: list[Device] = []
        self._model: Any = None
        self._lock = threading.Lock()

    def prepare_frontend(self, devices: list[Device]) -> None:
        """Called once with the engine's devices: a GPU engine decodes the JPEGs (unless
        ``GPUFLEET_JPEG_DECODE=frontend``); otherwise this front end does, with the classifier's code."""
        self._devices = list(devices)
        self._engine_decodes = any(d.is_cuda for d in devices) and jpeg_decode_where() != "frontend"
        if not self._engine_decodes:
            self._classifier()

    def preprocess(self, item: Any) -> Any:
        if self._engine_decodes:
            data = image_bytes(item)
            if data is not None:
                return complete_jpeg(data)  # the raw JPEG to the engine, which decodes it on its GPU in batches
            if isinstance(item, np.ndarray):  # e.g. a KServe v2 UINT8 tensor: as the classifier makes it, CHW
                chw = np.ascontiguousarray(to_rgb_array(item).transpose(2, 0, 1))
                if chw.shape[1:] == (self.image_size, self.image_size):
                    return chw
        return self._classifier().preprocess(item)  # decoded or resized here: the classifier's own code

    def _classifier(self) -> Any:
        """The classifier itself (not set up), for what this front end decodes or resizes (imports torch)."""
        with self._lock:
            if self._model is None:
                from gpufleet.models.zoo.classifier import ImageClassifier

                model = ImageClassifier(self.arch, image_size=self.image_size)
                model.prepare_frontend(self._devices)
                self._model = model
            return self._model
