"""Synthetic data: deterministic, boxes inside frames, videos that PyAV reads back."""

from __future__ import annotations

import numpy as np
import pytest

from gpufleet.tools import synth


def test_text_image_is_deterministic_and_rotates() -> None:
    a = synth.text_image(size=(200, 120), angle=0, seed=3)
    b = synth.text_image(size=(200, 120), angle=0, seed=3)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.size == (200, 120)
    assert synth.text_image(size=(200, 120), angle=90, seed=3).size == (120, 200)
    # 90 degrees clockwise: the top-left of the upright page lands at the top-right
    rot = np.asarray(synth.text_image(size=(200, 120), angle=90, seed=3))
    assert np.array_equal(rot, np.rot90(np.asarray(a), k=-1))
    with pytest.raises(ValueError):
        synth.text_image(angle=45)


def test_moving_text_frames_deterministic_with_boxes_inside() -> None:
    run1 = list(synth.moving_text_frames(12, size=(320, 180), n_lines=3, seed=1))
    run2 = list(synth.moving_text_frames(12, size=(320, 180), n_lines=3, seed=1))
    assert len(run1) == 12
    for (f1, b1), (f2, b2) in zip(run1, run2, strict=True):
        assert f1.shape == (180, 320, 3) and f1.dtype == np.uint8
        assert np.array_equal(f1, f2) and b1 == b2
        assert len(b1) == 3
        for x0, y0, x1, y1 in b1:
            assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 180
            ink = f1[y0:y1, x0:x1].min(axis=2)
            assert ink.min() < 100  # the box holds dark text pixels
    assert not np.array_equal(run1[0][0], run1[5][0])  # the text moves
    other = next(synth.moving_text_frames(1, size=(320, 180), seed=2))[0]
    assert not np.array_equal(other, run1[0][0])


def test_boxes_are_tight() -> None:
    frame, boxes = next(synth.moving_text_frames(1, size=(320, 180), seed=4))
    dark = frame.min(axis=2) < 120
    ys, xs = np.nonzero(dark)
    assert xs.min() >= min(b[0] for b in boxes) and xs.max() < max(b[2] for b in boxes)
    assert ys.min() >= min(b[1] for b in boxes) and ys.max() < max(b[3] for b in boxes)


def test_write_video_roundtrip(tmp_path) -> None:
    av = pytest.importorskip("av")
    path = tmp_path / "tiny.mp4"
    frames = (f for f, _ in synth.moving_text_frames(10, size=(160, 96), seed=0))
    assert synth.write_video(path, frames, fps=10) == 10
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 10
    assert decoded[0].shape == (96, 160, 3)


def test_iou_and_recall_rules() -> None:
    assert synth.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert synth.iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert synth.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    gt = [(0, 0, 100, 20), (0, 50, 100, 70)]
    assert synth.box_recall([(0, 0, 100, 20)], gt) == 0.5
    words = [(0, 0, 30, 20), (35, 0, 70, 20)]  # a line split into words, 65% covered
    assert synth.box_recall(words, gt[:1]) == 1.0
    assert synth.box_recall([(0, 0, 30, 20)], gt[:1]) == 0.0  # 30% covered
    assert synth.box_recall([(-500, -500, 600, 600)], gt[:1]) == 0.0  # one huge box does not count
    assert synth.box_recall([], []) == 1.0
