"""Spans and work stealing: a decoder that is done takes the back half of the longest span left; results stay
in frame order, every frame once, the same as without stealing."""

from __future__ import annotations

from pathlib import Path

from gpufleet.video.config import VideoConfig
from gpufleet.video.job import FrameResult, StreamEnd, VideoJob
from gpufleet.video.segments import OrderedMerge, Spans
from tests.video.conftest import make_clip

MEAN = str(Path(__file__).with_name("slow_model.py")) + ":SlowMean"
KEYS = tuple(range(0, 300, 30))


def test_steal_takes_the_back_half_of_the_longest_span_at_a_keyframe() -> None:
    spans = Spans(min_frames=30)
    short = spans.add("a", 0, 120, KEYS)
    long = spans.add("b", 0, 300, KEYS)
    assert long.claim(0, 32) == 32 and long.pos == 32
    new = spans.steal()
    assert new is not None and new.owner == "b"
    assert (new.start, new.stop) == (180, 300) and long.stop == 180  # the keyframe nearest (32 + 300) / 2
    assert short.claim(100, 32) == 20 and short.claim(120, 8) == 0  # a claim never passes the span's end
    assert spans.stolen == 1


def test_steal_leaves_claimed_frames_and_short_spans_alone() -> None:
    spans = Spans(min_frames=30)
    span = spans.add("a", 0, 120, KEYS)
    assert span.claim(0, 70) == 70
    assert spans.steal() is None  # 50 frames left: less than two halves of 30
    span2 = spans.add("b", 0, 120, KEYS)
    span2.finish()
    assert spans.steal() is None  # a finished span is never cut
    assert Spans(min_frames=0).steal() is None
    refused = Spans(min_frames=30)
    refused.add("c", 0, 300, KEYS)
    assert refused.steal(lambda victim: victim.owner != "c") is None


def test_steal_adds_the_new_span_to_its_inputs_merge_in_order() -> None:
    spans = Spans(min_frames=30)
    merge = OrderedMerge([0])
    span = spans.add("a", 0, 300, KEYS, merge)
    new = spans.steal()
    assert new is not None and new.merge is merge and (span.stop, new.start) == (150, 150)
    merge.put(150, "late")
    merge.close(150)
    merge.put(0, "early")
    merge.close(0)
    assert list(merge) == ["early", "late"]
    merge.stop_event.set()
    assert not merge.add(210)  # a stopped merge takes no more spans (the steal is refused)


def _run(inputs: list[str], steal_frames: int) -> tuple[dict[str, list[tuple[int, float]]], dict[str, StreamEnd]]:
    cfg = VideoConfig(model=MEAN, cpu_devices=2, decoder="cpu", segments=1, batch_size=4, queue_size=8,
                      steal_frames=steal_frames, progress=False)
    frames: dict[str, list[tuple[int, float]]] = {}
    ends: dict[str, StreamEnd] = {}
    with VideoJob(inputs, cfg) as job:
        for ev in job.events():
            if isinstance(ev, FrameResult):
                assert ev.error is None
                frames.setdefault(ev.stream, []).append((ev.frame, ev.results))
            else:
                ends[ev.stream] = ev
    return frames, ends


def test_a_free_decoder_helps_the_longest_input_and_results_match(clips, tmp_path) -> None:
    long = make_clip(tmp_path / "long.mp4", 160, (160, 96), seed=7, gop=10)
    inputs = [str(clips["small"]), str(long)]
    base, base_ends = _run(inputs, steal_frames=0)
    got, ends = _run(inputs, steal_frames=10)
    assert base_ends["long"].segments == 1 and ends["long"].segments > 1  # the small input's decoder helped
    assert all(e.status == "ok" for e in ends.values())
    assert [f for f, _ in got["long"]] == list(range(160)) and [f for f, _ in got["small"]] == list(range(30))
    assert got == base  # every frame once, in order, decoded the same across the cuts


def test_a_span_cut_while_decoding_on_the_cpu_gives_the_same_frames(clips) -> None:
    from gpufleet.video.sources import CpuSource, probe

    info = probe(str(clips["text"]))
    whole = [f for chunk in CpuSource(info, 0, 40, chunk=8) for f in chunk]
    spans = Spans(min_frames=10)
    victim = spans.add("text", 0, 40, info.keyframes)
    source = iter(CpuSource(info, 0, 40, chunk=8, span=victim))
    first = list(next(source))
    thief = spans.steal()
    assert thief is not None and (victim.stop, thief.start) == (20, 20)
    first += [f for chunk in source for f in chunk]
    rest = [f for chunk in CpuSource(info, thief.start, thief.stop, chunk=8, span=thief) for f in chunk]
    assert [f.index for f in first + rest] == list(range(40))
    assert all((a.image == b.image).all() for a, b in zip(first + rest, whole, strict=True))
