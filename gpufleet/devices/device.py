"""The ``Device`` record: one GPU (or one simulated CPU device) a worker can be pinned to."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Device"]


@dataclass(frozen=True, kw_only=True)
class Device:
    """One device a worker runs on.

    ``index`` is the position as the process sees it (``cuda:index``, after any ``CUDA_VISIBLE_DEVICES``
    remapping); ``physical_index`` is the index nvidia-smi shows. CPU devices (``kind="cpu"``) stand in for
    GPUs on machines without one, so multi-device behaviour runs and is tested anywhere.

    >>> Device(index=0, kind="cpu", name="CPU").torch
    'cpu'
    """

    index: int
    kind: str = "cuda"  # "cuda" | "cpu"
    name: str = ""
    uuid: str = ""
    memory_gb: float = 0.0
    compute_capability: tuple[int, int] | None = None
    arch: str = "unknown"
    precision: str = "fp32"  # recommended dtype: "bf16" | "fp16" | "fp32"
    tf32: bool = False
    physical_index: int | None = None

    @property
    def torch(self) -> str:
        """The torch device string: ``"cuda:1"`` or ``"cpu"``."""
        return f"cuda:{self.index}" if self.kind == "cuda" else "cpu"

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def label(self) -> str:
        """Short, unique label for logs, stats and metrics: ``"cuda:1"`` or ``"cpu:3"``."""
        return f"{self.kind}:{self.index}"
