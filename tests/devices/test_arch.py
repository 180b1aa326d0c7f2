"""The architecture table: family, default precision, tf32 and extra formats per compute capability."""

from __future__ import annotations

import dataclasses

import pytest

from gpufleet.devices import arch_for
from gpufleet.devices.arch import KNOWN_ARCHS, ArchInfo

TABLE = [
    # cc, family, precision, tf32, extras
    ((3, 7), "Kepler", "fp32", False, ()),
    ((5, 2), "Maxwell", "fp32", False, ()),
    ((6, 0), "Pascal", "fp32", False, ()),
    ((6, 1), "Pascal", "fp32", False, ()),  # P40: slow fp16
    ((7, 0), "Volta", "fp16", False, ()),
    ((7, 2), "Volta", "fp16", False, ()),
    ((7, 5), "Turing", "fp16", False, ()),
    ((8, 0), "Ampere", "bf16", True, ()),
    ((8, 6), "Ampere", "bf16", True, ()),
    ((8, 7), "Ampere", "bf16", True, ()),
    ((8, 9), "Ada", "bf16", True, ("fp8",)),
    ((9, 0), "Hopper", "bf16", True, ("fp8",)),
    ((10, 0), "Blackwell", "bf16", True, ("fp8", "fp4")),
    ((10, 1), "Blackwell", "bf16", True, ("fp8", "fp4")),
    ((10, 3), "Blackwell", "bf16", True, ("fp8", "fp4")),
    ((12, 0), "Blackwell", "bf16", True, ("fp8", "fp4")),
    ((12, 1), "Blackwell", "bf16", True, ("fp8", "fp4")),
]


@pytest.mark.parametrize(("cc", "name", "precision", "tf32", "extras"), TABLE)
def test_every_architecture(cc, name, precision, tf32, extras):
    info = arch_for(cc)
    assert (info.name, info.precision, info.tf32, info.extras, info.known) == (name, precision, tf32, extras, True)
    assert info.fp8 == ("fp8" in extras)
    assert info.fp4 == ("fp4" in extras)


def test_table_covers_every_known_entry():
    assert {cc for cc, *_ in TABLE} <= set(KNOWN_ARCHS)
    for cc, info in KNOWN_ARCHS.items():
        assert arch_for(cc) is info
        assert info.precision in ("bf16", "fp16", "fp32")
        assert info.tf32 == (info.precision == "bf16")


@pytest.mark.parametrize("cc", [(13, 0), (12, 9), (15, 3)])
def test_future_capability_is_newest_family_with_bf16(cc):
    info = arch_for(cc)
    assert info.name == "Blackwell"
    assert info.precision == "bf16" and info.tf32
    assert not info.known


@pytest.mark.parametrize(
    ("cc", "name"), [((8, 8), "Ampere"), ((9, 5), "Hopper"), ((7, 3), "Volta"), ((6, 9), "Pascal")]
)
def test_unknown_minor_takes_closest_lower_entry(cc, name):
    assert arch_for(cc).name == name


def test_very_old_capability_is_fp32():
    info = arch_for((2, 1))
    assert info.precision == "fp32" and not info.known


def test_arch_info_is_frozen():
    info = arch_for((9, 0))
    assert isinstance(info, ArchInfo)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.precision = "fp32"  # type: ignore[misc]
