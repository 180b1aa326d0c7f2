"""Probing, decoding whole files and segments with PyAV, errors, reconnect with backoff."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from gpufleet.errors import ConfigError
from gpufleet.video.segments import OrderedMerge, Segment, split
from gpufleet.video.sources import CpuSource, Frame, Reconnecting, SourceError, nvdec_streams, probe


def _decode(info, start=0, stop=None, every_nth=1):
    return [f for chunk in CpuSource(info, start, stop, chunk=4, every_nth=every_nth) for f in chunk]


def test_probe_reads_frames_keyframes_and_pts(clips) -> None:
    info = probe(str(clips["text"]))
    assert (info.width, info.height, info.codec, info.frames) == (320, 180, "h264", 40)
    assert info.keyframes == (0, 10, 20, 30)
    assert info.fps == pytest.approx(30)
    assert info.seconds(15) == pytest.approx(0.5)


def test_segments_decode_the_same_frames_as_a_full_decode(clips) -> None:
    info = probe(str(clips["text"]))
    full = _decode(info)
    assert [f.index for f in full] == list(range(40))
    segments = split(info, 3)
    assert [s.start for s in segments] == [0, 10, 30] or [s.start for s in segments][0] == 0
    assert sum(len(s) for s in segments) == 40
    parts = [f for s in segments for f in _decode(info, s.start, s.stop)]
    assert [f.index for f in parts] == list(range(40))
    assert all(np.array_equal(a.image, b.image) and a.pts == b.pts for a, b in zip(parts, full, strict=True))
    assert [f.index for f in _decode(info, every_nth=3)] == list(range(0, 40, 3))


def test_split_edge_cases(clips) -> None:
    info = probe(str(clips["text"]))
    assert split(info, 1) == [Segment(0, 0, 40)]
    assert len(split(info, 10)) == 4  # no more segments than keyframes
    assert [(s.start, s.stop) for s in split(info, 2)] == [(0, 20), (20, 40)]


@pytest.mark.parametrize("which, message", [("missing", "no such file"), ("bad", "not a video")])
def test_bad_inputs_give_one_clear_line(clips, tmp_path, which, message) -> None:
    path = str(tmp_path / "missing.mp4") if which == "missing" else str(clips["bad"])
    with pytest.raises(SourceError, match=message) as err:
        probe(path)
    assert "\n" not in str(err.value)


def test_reconnecting_retries_with_backoff_then_gives_up() -> None:
    calls, sleeps = [], []

    class Flaky:
        def __init__(self, n: int) -> None:
            self.n = n

        def __iter__(self):
            calls.append(self.n)
            if len(calls) in (1, 2):  # refuses twice, then streams 3 frames, then drops
                raise SourceError("cam: cannot connect")
            if len(calls) == 3:
                yield [Frame(0, 0.0, "a"), Frame(1, 0.1, "b")]
                raise SourceError("cam: connection reset")
            if len(calls) == 4:
                yield [Frame(0, 0.2, "c")]

    src = Reconnecting(Flaky, attempts=3, backoff_s=0.1, sleep=sleeps.append)
    frames = [f for chunk in src for f in chunk]
    assert [f.index for f in frames] == [0, 1, 2]  # indices keep counting across reconnects
    assert sleeps == [0.1, 0.2, 0.1]  # doubling, reset after frames flowed
    assert src.reconnects == 3

    def never(_):
        raise SourceError("cam: cannot connect")

    with pytest.raises(SourceError, match="gave up after 2 attempts"):
        list(Reconnecting(lambda n: iter(never(n)), attempts=2, backoff_s=0.0, sleep=lambda s: None))


def test_ordered_merge_yields_producers_in_order() -> None:
    merge = OrderedMerge([0, 10, 20], limit=2)

    def produce(i: int) -> None:
        for k in range(5):
            assert merge.put(10 * i, (i, k))
        merge.close(10 * i)

    threads = [threading.Thread(target=produce, args=(i,)) for i in (2, 1, 0)]
    for t in threads:
        t.start()
    got = list(merge)
    for t in threads:
        t.join()
    assert got == [(i, k) for i in range(3) for k in range(5)]


def test_ordered_merge_raises_a_producers_error_in_turn() -> None:
    merge = OrderedMerge([0, 1])
    merge.put(0, "a")
    merge.close(0)
    merge.close(1, SourceError("seg 1 broke"))
    it = iter(merge)
    assert next(it) == "a"
    with pytest.raises(SourceError, match="seg 1 broke"):
        next(it)


def test_nvdec_streams_setting(monkeypatch) -> None:
    monkeypatch.delenv("GPUFLEET_NVDEC_STREAMS", raising=False)
    assert nvdec_streams() == "shared"
    monkeypatch.setenv("GPUFLEET_NVDEC_STREAMS", " Own ")
    assert nvdec_streams() == "own"
    monkeypatch.setenv("GPUFLEET_NVDEC_STREAMS", "many")
    with pytest.raises(ConfigError, match="GPUFLEET_NVDEC_STREAMS must be 'shared' or 'own'"):
        nvdec_streams()
