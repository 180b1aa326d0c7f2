"""The video pipeline on the CPU decoder: ordered JSONL, detections, segments, many inputs, failures, interrupts."""

from __future__ import annotations

import json

import av
import pytest

from gpufleet.tools import synth
from gpufleet.video import frames, run

OPTS = {"runtime": "onnx", "batch_size": 4, "progress": False}


def _lines(path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def _recall(records, truth) -> float:
    return sum(synth.box_recall([r["box"] for r in rec["results"]], truth[rec["frame"]]) for rec in records) \
        / len(records)


def _count(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_jsonl_is_frame_ordered_and_detections_match_truth(clips, tmp_path) -> None:
    clip = clips["text"]
    out = tmp_path / "frames.jsonl"
    summary = run(str(clip), "textdet", jsonl=str(out), cpu_devices=1, segments=1, **OPTS)
    recs = _lines(out)
    assert [r["frame"] for r in recs] == list(range(40))  # exactly one line per frame, in order
    assert all(set(r) == {"stream", "frame", "pts", "results"} and r["stream"] == "text" for r in recs)
    assert [r["pts"] for r in recs] == pytest.approx([i / 30 for i in range(40)], abs=1e-3)
    assert _recall(recs, clip.truth) >= 0.8
    assert summary["exit_code"] == 0 and summary["frames"] == 40 and summary["decoders"] == ["cpu"]


def test_segments_over_two_devices_match_sequential(clips, tmp_path) -> None:
    clip = clips["text"]
    seq = run(str(clip), "textdet", jsonl=str(tmp_path / "seq.jsonl"), cpu_devices=1, segments=1, **OPTS)
    par = run(str(clip), "textdet", jsonl=str(tmp_path / "par.jsonl"), cpu_devices=2, segments=2, **OPTS)
    assert seq["inputs"][0]["segments"] == 1 and par["inputs"][0]["segments"] == 2
    assert par["devices"] == ["cpu:0", "cpu:1"]
    a, b = _lines(tmp_path / "seq.jsonl"), _lines(tmp_path / "par.jsonl")
    assert [r["frame"] for r in b] == list(range(40))
    for x, y in zip(a, b, strict=True):
        assert [d["box"] for d in x["results"]] == [d["box"] for d in y["results"]]
        assert [d["score"] for d in x["results"]] == pytest.approx([d["score"] for d in y["results"]], abs=1e-4)


def test_several_inputs_and_failures_do_not_stop_the_others(clips, tmp_path) -> None:
    inputs = [str(clips["text"]), str(tmp_path / "missing.mp4"), str(clips["small"]), str(clips["bad"]),
              "http://127.0.0.1:9/never.mp4"]
    summary = run(inputs, "textdet", jsonl=str(tmp_path / "f.jsonl"), cpu_devices=2, reconnect_attempts=2,
                  backoff_s=0.01, timeout_s=2, **OPTS)
    rows = {r["stream"]: r for r in summary["inputs"]}
    assert summary["exit_code"] == 1 and summary["failed"] == 3
    assert rows["missing"]["error"].endswith("no such file")
    assert "not a video" in rows["bad"]["error"]
    assert "gave up after 2 attempts" in rows["127.0.0.1_9_never.mp4"]["error"]
    assert all("\n" not in r["error"] for r in rows.values() if r["error"])
    for name, n in (("text", 40), ("small", 30)):
        assert rows[name]["status"] == "ok"
        recs = _lines(tmp_path / f"f.{name}.jsonl")
        assert [r["frame"] for r in recs] == list(range(n)) and {r["stream"] for r in recs} == {name}
    assert not (tmp_path / "f.missing.jsonl").exists()
    assert _recall(_lines(tmp_path / "f.text.jsonl"), clips["text"].truth) >= 0.8


def test_annotated_output_opens_with_the_right_frame_count(clips, tmp_path) -> None:
    out = tmp_path / "annotated.mp4"
    summary = run(str(clips["small"]), "textdet", out=str(out), cpu_devices=2, encoder="auto", **OPTS)
    assert summary["inputs"][0]["out"] == str(out) and summary["encoders"] == ["libx264"]
    assert _count(out) == 30
    with av.open(str(out)) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert first.shape == (96, 160, 3)
    assert summary["stages_s"]["encode"] > 0 and summary["stages_s"]["draw"] > 0


def test_interrupt_from_a_callback_leaves_playable_files(clips, tmp_path) -> None:
    seen = []

    def stop_after_five(r) -> None:
        seen.append(r.frame)
        if len(seen) == 5:
            raise KeyboardInterrupt

    out, jl = tmp_path / "cut.mp4", tmp_path / "cut.jsonl"
    summary = run(str(clips["text"]), "textdet", out=str(out), jsonl=str(jl), cpu_devices=1, segments=1,
                  on_frame=stop_after_five, **OPTS)
    assert summary["interrupted"] and summary["exit_code"] == 130
    assert [r["frame"] for r in _lines(jl)] == [0, 1, 2, 3, 4]
    assert _count(out) == 5  # the mp4 was finished (moov written) and plays
    # The summary counts what was written, not what was decoded and queued behind the interrupted frame.
    assert summary["frames"] == 5 and summary["inputs"][0]["frames"] == 5


def test_frames_iterator_and_every_nth(clips) -> None:
    got = [(r.stream, r.frame) for r in frames([str(clips["small"])], "textdet", cpu_devices=1, every_nth=5,
                                               **OPTS)]
    assert got == [("small", i) for i in range(0, 30, 5)]
