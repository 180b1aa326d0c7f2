"""Small test videos (moving text with known boxes), made once per session with PyAV."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("av")

from gpufleet.tools import synth  # noqa: E402
from gpufleet.video.sinks import encode_frames  # noqa: E402


class Clip:
    def __init__(self, path: Path, truth: list, size: tuple[int, int]) -> None:
        self.path, self.truth, self.size = path, truth, size

    def __str__(self) -> str:
        return str(self.path)


def make_clip(path: Path, n: int, size: tuple[int, int], seed: int, gop: int = 10) -> Clip:
    rendered = list(synth.moving_text_frames(n, size=size, seed=seed))
    encode_frames(path, (f for f, _ in rendered), fps=30, gop=gop)
    return Clip(path, [b for _, b in rendered], size)


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Clip]:
    """``text``: 320x180, 40 frames, a keyframe every 10; ``small``: 160x96, 30 frames; ``bad``: not a video."""
    d = tmp_path_factory.mktemp("clips")
    out = {"text": make_clip(d / "text.mp4", 40, (320, 180), seed=3),
           "small": make_clip(d / "small.mp4", 30, (160, 96), seed=5, gop=8)}
    bad = d / "bad.mp4"
    bad.write_bytes(b"this is not a video, just some bytes " * 50)
    out["bad"] = Clip(bad, [], (0, 0))
    return out
