"""GPU architecture table: compute capability → family name, recommended dtype and fast number formats.

The recommended precision is what a model should run in by default on that family: bf16 where the tensor cores
support it (Ampere and newer), fp16 on Volta/Turing, fp32 on older parts (Pascal's P40/P4/GTX 10xx run fp16 at a
fraction of fp32 speed, so fp32 is the safe default there).

>>> arch_for((9, 0)).name, arch_for((9, 0)).precision
('Hopper', 'bf16')
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from dataclasses import dataclass

__all__ = ["ArchInfo", "KNOWN_ARCHS", "arch_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ArchInfo:
    """What gpufleet knows about one GPU family.

    ``extras`` lists low-precision formats with hardware support beyond the default dtype (``"fp8"``,
    ``"fp4"``). ``known`` is False when the compute capability is newer than the table and was mapped to the
    newest known family.
    """

    name: str
    precision: str  # "bf16" | "fp16" | "fp32"
    tf32: bool = False
    extras: tuple[str, ...] = ()
    known: bool = True

    @property
    def fp8(self) -> bool:
        return "fp8" in self.extras

    @property
    def fp4(self) -> bool:
        return "fp4" in self.extras


_KEPLER = ArchInfo(name="Kepler", precision="fp32")
_MAXWELL = ArchInfo(name="Maxwell", precision="fp32")
_PASCAL = ArchInfo(name="Pascal", precision="fp32")
_VOLTA = ArchInfo(name="Volta", precision="fp16")
_TURING = ArchInfo(name="Turing", precision="fp16")
_AMPERE = ArchInfo(name="Ampere", precision="bf16", tf32=True)
_ADA = ArchInfo(name="Ada", precision="bf16", tf32=True, extras=("fp8",))
_HOPPER = ArchInfo(name="Hopper", precision="bf16", tf32=True, extras=("fp8",))
_BLACKWELL = ArchInfo(name="Blackwell", precision="bf16", tf32=True, extras=("fp8", "fp4"))

#: Every compute capability in the table, in ascending order. A capability between two entries takes the
#: lower one (e.g. 6.1 → Pascal, 8.8 → Ampere); one above the last takes the newest family.
KNOWN_ARCHS: dict[tuple[int, int], ArchInfo] = {
    (3, 0): _KEPLER,
    (3, 5): _KEPLER,
    (3, 7): _KEPLER,
    (5, 0): _MAXWELL,
    (5, 2): _MAXWELL,
    (5, 3): _MAXWELL,
    (6, 0): _PASCAL,
    (6, 1): _PASCAL,
    (6, 2): _PASCAL,
    (7, 0): _VOLTA,
    (7, 2): _VOLTA,  # Jetson Xavier
    (7, 5): _TURING,
    (8, 0): _AMPERE,
    (8, 6): _AMPERE,
    (8, 7): _AMPERE,  # Jetson Orin
    (8, 9): _ADA,
    (9, 0): _HOPPER,
    (10, 0): _BLACKWELL,  # B200
    (10, 1): _BLACKWELL,  # Thor (CUDA 12)
    (10, 3): _BLACKWELL,  # B300
    (11, 0): _BLACKWELL,  # Thor (CUDA 13)
    (12, 0): _BLACKWELL,  # RTX 50xx, RTX PRO 6000
    (12, 1): _BLACKWELL,  # GB10 / DGX Spark
}

_KEYS = sorted(KNOWN_ARCHS)
_UNKNOWN_OLD = ArchInfo(name="unknown", precision="fp32", known=False)


def arch_for(cc: tuple[int, int]) -> ArchInfo:
    """The family of compute capability ``cc`` (e.g. ``(8, 6)``).

    Unknown minors fall back to the closest lower entry of the table; capabilities newer than the table are
    treated as the newest known family (bf16), marked ``known=False``.
    """
    key = (int(cc[0]), int(cc[1]))
    if key in KNOWN_ARCHS:
        return KNOWN_ARCHS[key]
    if key > _KEYS[-1]:
        log.debug("compute capability %d.%d is newer than the arch table; treating it as %s", *key, _BLACKWELL.name)
        return ArchInfo(name=_BLACKWELL.name, precision="bf16", tf32=True, extras=_BLACKWELL.extras, known=False)
    pos = bisect_right(_KEYS, key)
    if pos == 0:
        return _UNKNOWN_OLD
    return KNOWN_ARCHS[_KEYS[pos - 1]]
