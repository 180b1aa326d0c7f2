"""Drawing (numpy and torch give the same pixels), JSON conversion of model outputs and the JSONL sink."""

from __future__ import annotations

import json

import numpy as np
import torch

from gpufleet.video.models import TextDetVideo, make_preparer, resolve_model
from gpufleet.video.sinks import JsonlSink, draw_boxes, jsonable


def test_draw_boxes_numpy_and_torch_agree() -> None:
    img = np.full((40, 60, 3), 200, dtype=np.uint8)
    results = [{"box": [5, 6, 30, 20], "score": 0.9}, {"box": [50, 30, 70, 50], "score": 0.5}]
    a = draw_boxes(img, results)
    b = draw_boxes(torch.from_numpy(img).permute(2, 0, 1), results).permute(1, 2, 0).numpy()
    assert np.array_equal(a, b)
    assert (a[6, 5:30] == (255, 32, 32)).all() and (a[10, 10] == 200).all()
    assert np.array_equal(draw_boxes(img, {"label": 3}), img)  # non-box results draw nothing
    assert (img == 200).all()  # the input is not modified


def test_jsonable() -> None:
    out = jsonable((torch.tensor(3), torch.tensor(0.5), {"a": np.float32(1.5), "b": np.arange(2)}))
    assert out == [3, 0.5, {"a": 1.5, "b": [0, 1]}]


def test_models_resolve_and_prepare_on_the_frames_device() -> None:
    det = resolve_model("textdet", runtime="onnx", size=(1920, 1080))
    assert isinstance(det, TextDetVideo) and det.input_hw == (544, 960)
    frames = [np.zeros((1080, 1920, 3), dtype=np.uint8)] * 2
    items = make_preparer(det)(frames)
    assert items[0].array.shape == (3, 544, 960) and items[0].scale == 0.5
    from gpufleet.tools.bench import ImageClassifier

    clf = ImageClassifier("resnet18", example_shape=(3, 224, 224), example_dtype=torch.uint8)
    batch = make_preparer(clf)(frames)
    assert batch[0].shape == (3, 224, 224) and batch[0].dtype == torch.uint8


def test_scores_are_written_above_boxes_identically_on_numpy_and_torch() -> None:
    img = np.full((60, 80, 3), 255, dtype=np.uint8)
    results = [{"box": [10, 30, 50, 50], "score": 0.93}, {"box": [5, 2, 30, 20], "class": 7}]
    a = draw_boxes(img, results)
    b = draw_boxes(torch.from_numpy(img).permute(2, 0, 1), results).permute(1, 2, 0).numpy()
    assert np.array_equal(a, b)
    label_rows = a[18:28, 10:40]  # "0.93" sits just above the first box (10 px tall)
    assert (label_rows != 255).any()
    plain = draw_boxes(img, [{"box": [10, 30, 50, 50]}])
    assert np.array_equal(plain[18:28, 10:40], img[18:28, 10:40])  # no score, no label


def test_jsonl_sink_writes_whole_lines_in_blocks(tmp_path) -> None:
    path = tmp_path / "f.jsonl"
    sink = JsonlSink(path)
    sink.write({"frame": 0, "results": {"score": np.float32(0.5), "box": torch.tensor([1, 2])}})
    sink.write({"frame": 1, "results": None, "error": "bad"})
    assert path.read_bytes() in (b"", path.read_bytes().rstrip(b"\n") + b"\n")  # nothing, or whole lines
    sink.flush()  # what the pipeline calls when no frame came for a while (a stalled live stream)
    lines = path.read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"frame": 0, "results": {"score": 0.5, "box": [1, 2]}},
                                              {"frame": 1, "results": None, "error": "bad"}]
    sink.write({"frame": 2, "results": [3]})
    sink.close()
    assert len(path.read_text().splitlines()) == 3 and sink.lines == 3
