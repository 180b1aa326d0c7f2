"""``ImageClassifier``: a torchvision classifier (ResNet-50 by default) served from JPEG bytes or uint8 images.

JPEGs (raw bytes or ``{"image": base64}``) are decoded in batches on the GPU (nvJPEG through
``torchvision.io.decode_jpeg``) and resized to the model input in ``prepare_batch``, which a thread worker
runs on a thread and CUDA stream of its own while the previous batch runs the model (decoding was the GPU
worker's critical path: measured on one H200, decode + ResNet-50 fp16 at batch 128 ran 8,843 img/s in
series and 11,247 img/s overlapped); normalised on the device before the forward pass. On CPU devices they
are decoded in the preprocess threads. Weights are random unless ``weights``
names a state-dict file: the model of ``gpufleet bench`` and of the served-JPEG benchmark (speed, not accuracy).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import torch

from gpufleet.devices.device import Device
from gpufleet.errors import ConfigError, InputError
from gpufleet.models.base import stacked_rows
from gpufleet.models.torch_model import TorchModel
from gpufleet.models.zoo.inputs import complete_jpeg, decode_ahead, image_bytes, jpeg_decode_where, to_rgb_array

__all__ = ["ImageClassifier", "build_module"]

log = logging.getLogger(__name__)

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_BUILD_LOCK = threading.Lock()
# torchvision keeps one GPU JPEG decoder per process and rebuilds it (nvJPEG handle, buffers, stream) whenever
# a call names another device: two workers of one process on cuda:0 and cuda:1 rebuilt it on every batch
# (2x H200, JPEGs served over HTTP: 168 req/s instead of ~10,000). So the first device that decodes in a process decodes
# for all of them; the others copy the decoded images to their own GPU (peer to peer).
_DECODER_LOCK = threading.Lock()
_decoder_device: torch.device | None = None


def decoder_device(dev: torch.device) -> torch.device:
    """The device this process decodes JPEGs on: the first one asked for (see ``_decoder_device``)."""
    global _decoder_device
    with _DECODER_LOCK:
        if _decoder_device is None:
            _decoder_device = dev
        return _decoder_device


def build_module(name: str) -> torch.nn.Module:
    """A torchvision classifier with random weights (no downloads)."""
    try:
        import torchvision.models as tvm
    except ImportError as exc:
        raise ConfigError("this model needs torchvision: pip install torchvision") from exc
    try:
        return tvm.get_model(name, weights=None)
    except ValueError:
        raise ConfigError(f"unknown torchvision model {name!r}; e.g. resnet18, resnet50, mobilenet_v3_large") \
            from None


class _Bad:
    """Marks an item whose image could not be decoded; postprocess turns it into that item's InputError."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (bytes, bytearray, memoryview)):
        return torch.frombuffer(bytearray(x), dtype=torch.uint8)  # an encoded JPEG
    return torch.from_numpy(np.ascontiguousarray(x))


def _decode_jpegs(data: list[torch.Tensor], dev: torch.device) -> list:
    """RGB images of encoded JPEGs, decoded on ``dev`` in one batched call; a bad one becomes a ``_Bad``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=dev)
    except RuntimeError:  # one bad image fails the batched call: decode one by one to find it
        out: list = []
        for x in data:
            try:
                out.append(decode_jpeg(x, mode=ImageReadMode.RGB, device=dev))
            except RuntimeError as exc:
                out.append(_Bad(f"cannot decode the JPEG: {exc}"))
        return out


class ImageClassifier(TorchModel):
    """Top-1 ``{"class", "score"}`` per image. Items: JPEG bytes, ``{"image": base64}``, uint8 CHW tensors or
    HWC arrays. On CUDA devices CUDA graphs are captured per batch bucket up to the pool's max batch size.

    >>> model = ImageClassifier("resnet18", image_size=64)
    """

    # With ``gpufleet serve --http-workers N`` the front ends run ``preprocess`` (base64, JPEG checks, CPU decode for
    # CPU engines): the engine then does no per-item Python for it (measured on CPU: 141 -> 44 µs of engine
    # CPU per request).
    frontend_preprocess = True

    def __init__(self, name: str = "resnet50", *, image_size: int = 224, weights: str | None = None,
                 **kwargs: Any) -> None:
        jpeg_decode_where()  # a wrong value fails where the model is made (`gpufleet serve`: one error line)
        decode_ahead()
        kwargs.setdefault("cuda_graphs", True)
        kwargs.setdefault("example_shape", (3, image_size, image_size))
        kwargs.setdefault("example_dtype", torch.uint8)
        super().__init__(**kwargs)
        self.name = name
        self.image_size = image_size
        self.weights = weights
        self.max_batch_size: int | None = None  # set by the pool's worker before setup
        self._decode_stream: torch.cuda.Stream | None = None  # on another GPU's decoder (decoder_device)
        self._prep_stream: torch.cuda.Stream | None = None  # prepare_batch's, on this device
        self.prepare_eagerly = False  # GPUFLEET_DECODE_AHEAD=eager (set up on a GPU)
        self._launch_decode_stream: torch.cuda.Stream | None = None  # launch's decode (None: the compute stream)

    def load(self, device: Device) -> torch.nn.Module:
        # Workers set up in parallel threads and torch's RNG is global: seed and build under one lock so
        # every device gets identical (random) weights.
        # Random weights are initialised on the GPU itself (CPU initialisation of ResNet-50 took seconds of a
        # replacement worker's restart when the cores were busy serving); weights from a file load on the CPU.
        with _BUILD_LOCK:
            torch.manual_seed(0)
            if device.is_cuda and not self.weights:
                with torch.device(device.torch):
                    module = build_module(self.name)
            else:
                module = build_module(self.name)
        if self.weights:
            module.load_state_dict(torch.load(self.weights, map_location="cpu"))
        return module

    def prepare_spare(self) -> None:
        """In a process worker's spare child, before it is needed: import torchvision's model definitions (5-6 s
        of every ResNet-50 restart on a busy H100 host when ``load`` imported them)."""
        import torchvision.models  # noqa: F401

    def setup(self, device: Device) -> None:
        dev = torch.device(device.torch)
        self._mean = torch.tensor(_MEAN, device=dev).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(_STD, device=dev).view(1, 3, 1, 1) * 255
        self._scale, self._shift = 1 / self._std, -self._mean / self._std  # (x - mean) / std as x * scale + shift
        if device.is_cuda and self.cuda_graphs and self.warmup_batch_sizes == (1,):
            top = self.max_batch_size or 64
            self.warmup_batch_sizes = tuple(b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= top) or (1,)
            if self.batch_buckets is None:
                self.batch_buckets = tuple(sorted(set(self.warmup_batch_sizes) | {top}))
                self.warmup_batch_sizes = self.batch_buckets
        super().setup(device)  # warms up (and captures graphs) through transform
        ahead = decode_ahead()
        if device.is_cuda and ahead != "0":
            self._prep_stream = torch.cuda.Stream(dev)
            # eager: the side thread decodes the JPEGs as they come, in chunks the serving loop joins into
            # batches; 1: one whole batch at a time, once the GPU has room for it.
            self.prepare_eagerly = ahead == "eager"
        else:
            # CPU: preprocess decodes. GPU: decoding ahead on a side thread is opt-in (GPUFLEET_DECODE_AHEAD): on
            # one H100 (2026-12-06) `gpufleet serve resnet50` served at c=256 7,858 req/s with =1 against 8,960
            # without, and 7,308 with =eager against 9,196 (docs/benchmarks.md): torchvision's decoder takes one
            # call at a time, and whole batches decode faster per image, so launch decodes.
            self.prepare_batch = None  # type: ignore[assignment,method-assign]

    # -- items ----------------------------------------------------------------------------------------------
    def prepare_frontend(self, devices: list[Device]) -> None:
        """In an HTTP front end (this copy is never set up): keep JPEGs encoded when the engine decodes on GPUs,
        unless ``GPUFLEET_JPEG_DECODE=frontend`` asks the front ends to decode them on their CPU cores."""
        self._engine_decodes = any(d.is_cuda for d in devices) and jpeg_decode_where() != "frontend"

    def preprocess(self, item: Any) -> Any:
        """Encoded JPEGs stay encoded for batched GPU decode (CUDA) or are decoded here (CPU devices)."""
        data = image_bytes(item)
        if data is not None:
            complete_jpeg(data)
            if getattr(self, "_cuda", False):
                return torch.frombuffer(bytearray(data), dtype=torch.uint8)
            if getattr(self, "_engine_decodes", False):
                return data  # raw JPEG bytes to the engine, which decodes them on its GPU in batches
            return self._resize(self._decode_cpu(data))
        if isinstance(item, torch.Tensor) and item.dtype == torch.uint8 and item.dim() == 3 and item.shape[0] == 3:
            return self._resize(item)
        arr = to_rgb_array(item)
        return self._resize(torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))))

    def _decode_cpu(self, data: bytes) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            arr = to_rgb_array(data)  # PIL handles what libjpeg-turbo's fast path refuses (e.g. CMYK)
            return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def _resize(self, img: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        if img.shape[-2:] == (s, s):
            return img
        out = torch.nn.functional.interpolate(img[None].float(), size=(s, s), mode="bilinear", antialias=True,
                                              align_corners=False)
        return out[0].round_().clamp_(0, 255).to(torch.uint8)

    def prepare_batch(self, batch: list) -> list:
        """Decode the batch's JPEGs on the GPU and resize them, on a CUDA stream of its own, finished before it
        returns (a thread worker runs it on its own thread, one batch ahead of ``launch``)."""
        if not self._cuda:
            return batch
        with torch.cuda.device(self._dev):
            batch = self._tensors(batch)
            if not any(isinstance(x, torch.Tensor) and x.dim() == 1 for x in batch):
                return batch
            assert self._prep_stream is not None
            out = self._decode_gpu(batch, self._prep_stream)
            self._prep_stream.synchronize()  # launch may read them on any stream
            return out

    @staticmethod
    def _tensors(batch: list) -> list:
        if isinstance(stacked_rows(batch), torch.Tensor):  # a process worker's block of tensors stays one
            return batch
        # A front end's items arrive as bytes / numpy arrays; prepare_batch may have left undecodable ones.
        return [x if isinstance(x, (torch.Tensor, _Bad)) else _as_tensor(x) for x in batch]

    def launch(self, batch: list) -> Any:
        decode_s = decode_cpu_s = 0.0
        if self._cuda:
            batch = self._tensors(batch)
            if any(isinstance(x, torch.Tensor) and x.dim() == 1 for x in batch):  # not prepared: decode now
                t0, c0 = time.perf_counter(), time.thread_time()
                stream = self._stream if self._launch_decode_stream is None else self._launch_decode_stream
                batch = self._decode_gpu(batch, stream)
                # The batch is stacked next on the current stream: it must see the decodes and resizes.
                torch.cuda.current_stream(self._dev).wait_stream(stream)
                decode_s, decode_cpu_s = time.perf_counter() - t0, time.thread_time() - c0
        bad = {i: x for i, x in enumerate(batch) if isinstance(x, _Bad)}
        if bad:
            blank = torch.zeros((3, self.image_size, self.image_size), dtype=torch.uint8, device=self._dev)
            batch = [blank if i in bad else x for i, x in enumerate(batch)]
        handle = super().launch(batch)
        handle.extra = (bad, decode_s, decode_cpu_s)
        return handle

    def collect(self, handle: Any) -> list:
        """As :meth:`TorchModel.collect`; ``last_timings`` gains ``decode`` (the wall time of the batch's GPU JPEG
        decode in launch) and ``decode_cpu`` (the CPU time the launching thread spent in it; the rest it waited,
        for the GPU or for a core) when launch decoded."""
        outs = super().collect(handle)
        bad, decode_s, decode_cpu_s = handle.extra
        for i, b in bad.items():
            outs[i] = b
        if decode_s:
            self.last_timings["decode"] = decode_s
            self.last_timings["decode_cpu"] = decode_cpu_s
        return outs

    def _decode_gpu(self, batch: list, stream: torch.cuda.Stream) -> list:
        """Decode every encoded item of ``batch`` on the GPU in one call, on ``stream``."""
        idx = [i for i, x in enumerate(batch) if isinstance(x, torch.Tensor) and x.dim() == 1]
        out = list(batch)
        home = decoder_device(self._dev)
        with torch.cuda.stream(stream):
            if home == self._dev:
                imgs = _decode_jpegs([batch[i] for i in idx], home)
            else:
                if self._decode_stream is None:
                    self._decode_stream = torch.cuda.Stream(home)
                    log.info("JPEGs for %s decode on %s: torchvision keeps one GPU decoder per process "
                             "(backend='process' decodes on every GPU)", self._dev, home)
                # Decoded and copied out on a stream of the decoding GPU: the copy to this device waits for
                # the current streams of both devices (that one and our compute stream).
                with torch.cuda.stream(self._decode_stream):
                    imgs = [x if isinstance(x, _Bad) else x.to(self._dev, non_blocking=True)
                            for x in _decode_jpegs([batch[i] for i in idx], home)]
            for i, img in zip(idx, imgs):
                out[i] = img if isinstance(img, _Bad) else self._resize(img)
            for i, x in enumerate(out):  # decoded arrays from preprocess join the batch on the device
                if isinstance(x, torch.Tensor) and x.device.type == "cpu":
                    out[i] = x.to(self._dev, non_blocking=True)
        return out

    # -- device side ----------------------------------------------------------------------------------------
    def transform(self, x: torch.Tensor) -> torch.Tensor:
        # One pass from uint8 to the model's dtype and layout, computed in float32: the five-step version (to
        # float32, subtract, divide, to the dtype, then channels_last) moved ~300 MB per batch of 64 at 224x224;
        # the pool gained 1-1.5% of throughput on an H100 (gpufleet bench, batch 64 and 128).
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.addcmul(self._shift, x, self._scale, out=torch.empty_like(x, dtype=self.dtype))

    def finalize(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score, cls = y.float().softmax(1).max(1)
        return cls, score

    def split(self, out: Any, n: int) -> list:
        # Two Python lists per batch instead of 2 x n zero-dim tensors read one by one (9 vs 139 µs at 64).
        cls, score = out
        return list(zip(cls.tolist(), score.tolist(), strict=True))

    def postprocess(self, output: Any) -> dict[str, Any]:
        if isinstance(output, _Bad):
            raise InputError(output.message)
        cls, score = output
        return {"class": int(cls), "score": float(score)}
