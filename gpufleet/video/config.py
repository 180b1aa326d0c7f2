"""``VideoConfig``: every option of a video job in one frozen, validated dataclass (the CLI maps onto it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from gpufleet.errors import ConfigError

__all__ = ["DECODERS", "ENCODERS", "VideoConfig"]

DECODERS = ("auto", "nvdec", "cpu")
ENCODERS = ("auto", "nvenc", "cpu")


@dataclass(frozen=True, kw_only=True)
class VideoConfig:
    """How :func:`gpufleet.video.run` decodes, batches and writes.

    ``batch_size=0`` probes the best batch per worker up to ``max_batch_size``. ``queue_size`` bounds the
    frames in flight per decoder (decoded, not yet answered). ``segments``: how many parts one file is split
    into at keyframes and decoded in parallel (0 = auto: ``decoders_per_gpu`` per GPU with nvdec, one per
    device with the CPU decoder, shared out between the inputs; 1 = one part per file to start with).
    ``steal_frames``: a decoder that is done takes the back half of the part with the most frames left, of any
    input (cut at a keyframe), when both halves keep at least this many frames, so that no decoder idles while
    a longer input goes on (0 = never: each part is decoded by the thread that started it). ``out``/``jsonl`` with
    several inputs become one file per input (``name.<stream>.ext``, or put ``{stream}`` in the path).
    ``process_per_gpu``: run the inputs as one process per device, each with its own share of the inputs
    (``None`` = when several GPUs and several inputs are given): NVDEC decoding of many streams is bound by one
    process's Python threads, so a second GPU in the same process adds little.
    """

    model: Any = "textdet"
    runtime: str = "auto"
    devices: str | Sequence[int] | None = None
    cpu_devices: int | None = None
    decoder: str = "auto"
    encoder: str = "auto"
    out: str | None = None
    jsonl: str | None = None
    batch_size: int = 0
    max_batch_size: int = 256
    max_wait_ms: float = 5.0
    queue_size: int = 50
    every_nth: int = 1
    segments: int = 0
    decoders_per_gpu: int = 4
    steal_frames: int = 30
    chunk: int = 0
    reconnect_attempts: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 10.0
    progress: bool | None = None
    process_per_gpu: bool | None = None

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}; got {self.decoder!r}")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"encoder must be one of {', '.join(ENCODERS)}; got {self.encoder!r}")
        for name in ("batch_size", "segments", "chunk", "steal_frames"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_batch_size", "queue_size", "every_nth", "decoders_per_gpu", "reconnect_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.backoff_s < 0 or self.timeout_s <= 0 or self.max_wait_ms < 0:
            raise ConfigError("backoff_s and max_wait_ms must be >= 0 and timeout_s > 0")

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}
