"""TorchModel on CPU devices through a Pool: same numbers as the module, outputs split per item, bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from gpufleet import Pool, TorchModel
from gpufleet.devices import Device
from gpufleet.errors import ConfigError, InputError, WorkerError
from gpufleet.models.torch_model import resolve_dtype

CPU = Device(index=0, kind="cpu", name="CPU")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("GPU_IDS", "GPUFLEET_GPUS", "GPUFLEET_CPU_DEVICES"):
        monkeypatch.delenv(name, raising=False)


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 4, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5),
    ).eval()


def linear() -> nn.Module:
    torch.manual_seed(1)
    return nn.Linear(4, 3).eval()


class TwoHeads(nn.Module):
    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.lin = nn.Linear(4, 3)
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor):
        y = self.lin(x)
        if self.as_dict:
            return {"logits": y, "score": y.sum(1)}
        return y, y.sum(1)


@pytest.mark.timeout(60)
def test_conv_net_matches_the_module() -> None:
    net = conv_net()
    torch.manual_seed(3)
    items = [torch.randn(3, 16, 16) for _ in range(24)]
    with Pool(TorchModel(net, example_shape=(3, 16, 16)), cpu_devices=2, max_batch_size=8) as pool:
        out = list(pool.map(items))
    with torch.inference_mode():
        want = net(torch.stack(items))
    assert len(out) == 24 and out[0].shape == (5,)
    assert torch.allclose(torch.stack(out), want, atol=1e-4, rtol=1e-4)


@pytest.mark.timeout(60)
def test_linear_matches_and_accepts_numpy_items() -> None:
    lin = linear()
    rng = np.random.default_rng(0)
    items = [rng.standard_normal(4).astype(np.float32) for _ in range(20)]
    with Pool(TorchModel(lin), cpu_devices=2, max_batch_size=4) as pool:
        out = list(pool.map(items))
        out64 = list(pool.map([a.astype(np.float64) for a in items]))  # cast to the compute dtype
    with torch.inference_mode():
        want = lin(torch.from_numpy(np.stack(items)))
    assert torch.allclose(torch.stack(out), want, atol=1e-5)
    assert torch.allclose(torch.stack(out64), want, atol=1e-5)
    assert out[0].dtype == torch.float32


@pytest.mark.timeout(60)
def test_plain_lists_are_made_tensors() -> None:
    lin = linear()
    items = [[float(i), 1.0, -1.0, 0.5] for i in range(6)]
    with Pool(TorchModel(lin), cpu_devices=1, max_batch_size=4) as pool:
        out = list(pool.map(items))
    with torch.inference_mode():
        want = lin(torch.tensor(items))
    assert torch.allclose(torch.stack(out), want, atol=1e-5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple", "dict"])
def test_structured_outputs_are_split_per_item(as_dict: bool) -> None:
    net = TwoHeads(as_dict).eval()
    torch.manual_seed(4)
    items = [torch.randn(4) for _ in range(10)]
    with Pool(TorchModel(net), cpu_devices=2, max_batch_size=4) as pool:
        out = list(pool.map(items))
    with torch.inference_mode():
        y = net.lin(torch.stack(items))
    for i, o in enumerate(out):
        if as_dict:
            assert set(o) == {"logits", "score"}
            logits, score = o["logits"], o["score"]
        else:
            assert isinstance(o, tuple) and len(o) == 2
            logits, score = o
        assert logits.shape == (3,) and score.shape == ()
        assert torch.allclose(logits, y[i], atol=1e-5)
        assert torch.allclose(score, y[i].sum(), atol=1e-5)


def test_items_of_different_shapes_are_an_input_error() -> None:
    m = TorchModel(linear())
    m.setup(CPU)
    with pytest.raises(InputError, match="shape"):
        m.predict([torch.zeros(4), torch.zeros(5)])
    with pytest.raises(InputError):
        m.predict([object(), object()])


@pytest.mark.timeout(60)
def test_mixed_shapes_in_one_batch_fail_only_the_item_that_does_not_fit() -> None:
    with Pool(TorchModel(linear()), cpu_devices=1, max_batch_size=2, max_wait_ms=5000) as pool:
        futs = [pool.submit(torch.zeros(4)), pool.submit(torch.zeros(5))]  # fills one batch of 2 at once
        # the batch's InputError (mixed shapes) is isolated: each item is served alone, the one the model
        # takes is answered and the other fails on its own
        assert futs[0].result(timeout=30).shape == (3,)
        with pytest.raises(WorkerError):
            futs[1].result(timeout=30)
        ok = [pool.submit(torch.ones(4)), pool.submit(torch.ones(4))]  # the worker keeps serving
        assert all(f.result(timeout=30).shape == (3,) for f in ok)


def test_resolve_dtype() -> None:
    assert resolve_dtype("auto", CPU) == torch.float32
    gpu = Device(index=0, kind="cuda", precision="bf16")
    assert resolve_dtype("auto", gpu) == torch.bfloat16
    assert resolve_dtype("auto", Device(index=0, kind="cuda", precision="fp16")) == torch.float16
    assert resolve_dtype("fp16", CPU) == torch.float16
    assert resolve_dtype("bf16", CPU) == torch.bfloat16
    assert resolve_dtype("fp32", gpu) == torch.float32
    with pytest.raises(ConfigError, match="fp8"):
        resolve_dtype("fp8", CPU)
    with pytest.raises(ConfigError, match="int4"):
        TorchModel(linear(), precision="int4")


@pytest.mark.timeout(60)
def test_bf16_on_cpu_returns_float32_close_to_fp32() -> None:
    lin = linear()
    torch.manual_seed(5)
    items = [torch.randn(4) for _ in range(8)]
    with Pool(TorchModel(lin, precision="bf16"), cpu_devices=1, max_batch_size=8) as pool:
        out = torch.stack(list(pool.map(items)))
    with torch.inference_mode():
        want = lin(torch.stack(items))
    assert out.dtype == torch.float32
    assert torch.allclose(out, want, atol=0.1, rtol=0.05)


class Classifier(TorchModel):
    """uint8 items scaled on the device; the output reduced to a class index before it is copied back."""

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0

    def finalize(self, y: torch.Tensor) -> torch.Tensor:
        return y.argmax(dim=1)


@pytest.mark.timeout(60)
def test_transform_and_finalize_hooks() -> None:
    lin = linear()
    torch.manual_seed(6)
    items = [torch.randint(0, 256, (4,), dtype=torch.uint8) for _ in range(16)]
    with Pool(Classifier(lin, example_shape=(4,), example_dtype=torch.uint8), cpu_devices=2,
              max_batch_size=4) as pool:
        out = list(pool.map(items))
    with torch.inference_mode():
        want = lin(torch.stack(items).float() / 255.0).argmax(dim=1)
    assert all(o.dtype == torch.int64 and o.shape == () for o in out)
    assert torch.equal(torch.stack(out), want)


class Loaded(TorchModel):
    """Builds its module in ``load`` (no module passed)."""

    def load(self, device: Device) -> nn.Module:
        return linear()


@pytest.mark.timeout(60)
def test_load_hook_and_module_factory() -> None:
    x = torch.randn(4)
    with torch.inference_mode():
        want = linear()(x)
    for model in (Loaded(), TorchModel(linear)):
        with Pool(model, cpu_devices=1) as pool:
            assert torch.allclose(pool.submit(x).result(timeout=30), want, atol=1e-5)
    with pytest.raises(NotImplementedError):
        TorchModel().setup(CPU)


def test_stage_timings_include_batch_assembly_and_compute() -> None:
    with Pool(TorchModel(torch.nn.Linear(8, 2)), cpu_devices=1, max_batch_size=8) as pool:
        list(pool.map([torch.randn(8) for _ in range(32)]))
        stages = pool.stats()["stages"]
    assert {"batch", "compute", "predict", "queue_wait", "e2e"} <= set(stages)
    assert stages["batch"]["count"] >= 4 and stages["compute"]["p50_ms"] >= 0.0


def test_a_stacked_batch_gives_the_same_outputs_as_its_rows() -> None:
    from gpufleet.models import StackedBatch

    m = TorchModel(conv_net())
    m.setup(CPU)
    block = torch.randn(5, 3, 16, 16)
    batch = StackedBatch(block)
    assert len(batch) == 5 and all(torch.equal(batch[i], block[i]) for i in range(5))
    expect = m.predict([block[i].clone() for i in range(5)])
    got = m.predict(batch)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(expect, got))
    batch[2] = torch.zeros(3, 16, 16)  # any change to the list drops the block: the rows are what counts
    assert batch.stacked is None
    assert torch.allclose(m.predict(batch)[2], m.predict([torch.zeros(3, 16, 16)])[0], atol=1e-6)
    assert StackedBatch(block)[1:3].__class__ is list  # a slice is a plain list of rows


def test_a_thread_made_serial_leaves_the_other_threads_thread_count() -> None:
    from gpufleet.models.torch_model import _serial_here

    before = torch.get_num_threads()
    seen: dict[str, object] = {}

    def body() -> None:
        seen["serial"] = _serial_here()
        seen["count"] = torch.get_num_threads()
        seen["again"] = _serial_here()

    th = threading.Thread(target=body)
    th.start()
    th.join()
    assert torch.get_num_threads() == before  # this thread's own count is untouched
    assert seen["serial"] is seen["again"]
    if seen["serial"]:
        assert seen["count"] == 1
    late: list[int] = []  # a thread started afterwards gets the process's count, not the serial thread's
    th = threading.Thread(target=lambda: late.append(torch.get_num_threads()))
    th.start()
    th.join()
    assert late == [before]
