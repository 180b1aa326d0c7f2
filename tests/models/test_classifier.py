"""ImageClassifier (zoo resnet18/resnet50): JPEG bytes, base64 JSON and uint8 images through a real Pool."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from gpufleet import InputError, Pool
from gpufleet.errors import ConfigError
from gpufleet.models.resolve import resolve_model
from gpufleet.models.zoo.classifier import ImageClassifier
from gpufleet.models.zoo.classifier_front import ClassifierFrontEnd


def _jpeg(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pool():
    with Pool(ImageClassifier("resnet18", image_size=64), cpu_devices=2, max_batch_size=8, max_wait_ms=2) as p:
        yield p


def test_every_input_kind_gives_the_same_top1(pool: Pool) -> None:
    from torchvision.io import decode_jpeg

    data = _jpeg(1)
    decoded = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))  # the decoder the model uses
    items = [data, {"image": base64.b64encode(data).decode()}, decoded, decoded.permute(1, 2, 0).numpy()]
    model = pool.model
    prepared = [model.preprocess(x) for x in items]
    assert all(torch.equal(prepared[0], p) for p in prepared[1:])  # one decoder, one tensor
    results = list(pool.map(items))
    # Random weights give a near-uniform softmax: batch composition may flip the arg-max between near-equal
    # logits, so compare the top score, not the class.
    assert all(set(r) == {"class", "score"} and 0.0 < r["score"] <= 1.0 for r in results)
    assert max(r["score"] for r in results) == pytest.approx(min(r["score"] for r in results), rel=1e-3)


def test_other_sizes_are_resized(pool: Pool) -> None:
    big, small = pool.submit(_jpeg(2, 96)).result(30), pool.submit(_jpeg(2, 64)).result(30)
    assert set(big) == {"class", "score"} and set(small) == {"class", "score"}


def test_bad_images_fail_alone(pool: Pool) -> None:
    good = _jpeg(3)
    items = [good, b"not a jpeg", {"image": "%%%"}, good[: len(good) // 2], good]
    out = list(pool.map(items, return_exceptions=True))
    assert isinstance(out[0], dict) and isinstance(out[4], dict)
    for bad in out[1:4]:
        assert isinstance(bad, InputError), bad
    assert "JPEG" in str(out[1]) and "base64" in str(out[2])


def test_resolved_by_name() -> None:
    model = resolve_model("resnet18", image_size=32)
    assert isinstance(model, ImageClassifier) and model.name == "resnet18"


def test_every_worker_gets_identical_weights(pool: Pool) -> None:
    params = [torch.cat([p.flatten() for p in w.model.module.parameters()]) for w in pool.workers]
    assert len(params) == 2 and torch.equal(params[0], params[1])


# What a front end runs: the classifier itself, or its torch-free front (what `gpufleet serve resnet50` uses).
FRONTS = {"classifier": lambda: ImageClassifier("resnet18", image_size=64),
          "front": lambda: ClassifierFrontEnd("resnet18", image_size=64)}


@pytest.mark.parametrize("front", sorted(FRONTS))
def test_front_end_preprocess_keeps_jpegs_encoded_for_a_gpu_engine(front: str) -> None:
    """In an HTTP front end (never set up) the classifier only checks and base64-decodes JPEGs when the engine
    decodes on GPUs, and decodes them itself for a CPU engine."""
    from gpufleet.devices import Device

    data = _jpeg(1)
    gpu_engine = FRONTS[front]()
    gpu_engine.prepare_frontend([Device(index=0, kind="cuda", name="GPU", memory_gb=80.0)])
    assert gpu_engine.preprocess({"image": base64.b64encode(data).decode()}) == data
    with pytest.raises(InputError, match="not a complete JPEG"):
        gpu_engine.preprocess(data[:-10])
    arr = np.zeros((32, 48, 3), dtype=np.uint8)  # an array (KServe v2 UINT8): resized here, for any engine
    assert gpu_engine.preprocess(arr).shape == (3, 64, 64)
    same = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)  # the model's size already
    assert np.array_equal(np.asarray(gpu_engine.preprocess(same)), same.transpose(2, 0, 1))
    cpu_engine = FRONTS[front]()
    cpu_engine.prepare_frontend([Device(index=0, kind="cpu", name="cpu", memory_gb=0.0)])
    img = cpu_engine.preprocess(data)
    assert isinstance(img, torch.Tensor) and img.shape == (3, 64, 64) and img.dtype == torch.uint8


@pytest.mark.parametrize("front", sorted(FRONTS))
def test_front_ends_decode_for_a_gpu_engine_when_asked(front: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpufleet.devices import Device

    monkeypatch.setenv("GPUFLEET_JPEG_DECODE", "frontend")
    model = FRONTS[front]()
    model.prepare_frontend([Device(index=0, kind="cuda", name="GPU", memory_gb=80.0)])
    img = model.preprocess(_jpeg(1))
    assert isinstance(img, torch.Tensor) and img.shape == (3, 64, 64) and img.dtype == torch.uint8
    monkeypatch.setenv("GPUFLEET_JPEG_DECODE", "cpu")
    with pytest.raises(ConfigError, match="GPUFLEET_JPEG_DECODE must be 'engine' or 'frontend', got 'cpu'"):
        ImageClassifier("resnet18", image_size=64)
    with pytest.raises(ConfigError, match="GPUFLEET_JPEG_DECODE must be 'engine' or 'frontend', got 'cpu'"):
        ClassifierFrontEnd("resnet18").prepare_frontend([])


def test_a_wrong_decode_ahead_value_fails_where_the_model_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLEET_DECODE_AHEAD", "yes")
    with pytest.raises(ConfigError, match="GPUFLEET_DECODE_AHEAD must be '0', '1' or 'eager', got 'yes'"):
        ImageClassifier("resnet18", image_size=64)
    monkeypatch.setenv("GPUFLEET_DECODE_AHEAD", "Eager")
    assert ImageClassifier("resnet18", image_size=64).prepare_eagerly is False  # set where set up on a GPU


def test_a_front_end_of_a_gpu_engine_imports_no_torch() -> None:
    # `gpufleet serve resnet50` on GPUs: each front end only checks JPEGs and forwards them (~0.5 GB less memory
    # and ~2 s less CPU per front end than with torch imported).
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        from gpufleet.devices import Device
        from gpufleet.models.resolve import frontend_model

        front = frontend_model("resnet50")
        front.prepare_frontend([Device(index=0, kind="cuda", name="GPU", memory_gb=80.0)])
        data = {_jpeg(1)!r}
        assert front.preprocess(data) == data
        import numpy as np
        arr = np.arange(224 * 224 * 3, dtype=np.uint8).reshape(224, 224, 3)  # the model's size: no resize
        chw = front.preprocess(arr)
        assert chw.shape == (3, 224, 224) and (chw == arr.transpose(2, 0, 1)).all()
        assert "torch" not in sys.modules, "the front end imported torch"
        print("front-ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "front-ok" in proc.stdout, proc.stderr[-3000:]


def test_items_from_a_front_end_become_tensors() -> None:
    from gpufleet.models.zoo.classifier import _as_tensor

    data = _jpeg(2)
    enc = _as_tensor(data)
    assert enc.dtype == torch.uint8 and enc.dim() == 1 and bytes(enc.numpy()) == data
    arr = np.zeros((3, 8, 8), dtype=np.uint8)
    assert _as_tensor(arr).shape == (3, 8, 8)
    t = torch.ones(3)
    assert _as_tensor(t) is t
