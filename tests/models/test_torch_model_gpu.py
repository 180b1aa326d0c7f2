"""TorchModel on a real GPU: results match eager PyTorch through the pipelined, pinned, side-stream path."""

from __future__ import annotations

import copy

import pytest
import torch

from gpufleet import Pool, TorchModel
from gpufleet.devices import select

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5),
    ).eval()


def test_pooled_results_match_eager_fp32() -> None:
    net = _net()
    xs = [torch.randn(3, 32, 32) for _ in range(300)]
    with torch.inference_mode():
        ref = net(torch.stack(xs))
    with Pool(TorchModel(net, precision="fp32"), "0", max_batch_size=16, max_wait_ms=1) as pool:
        out = torch.stack(list(pool.map(xs)))
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def test_auto_precision_uses_architecture_dtype() -> None:
    dev = select("0")[0]
    m = TorchModel(_net())
    m.setup(dev)
    expected = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dev.precision]
    assert m.dtype == expected
    assert next(m.module.parameters()).dtype == expected
    y = m.predict([torch.randn(3, 16, 16) for _ in range(4)])
    assert len(y) == 4 and y[0].dtype == torch.float32  # outputs come back as float32


def test_staging_buffers_are_reused_not_grown() -> None:
    dev = select("0")[0]
    m = TorchModel(_net(), precision="fp16")
    m.setup(dev)
    items = [torch.randn(3, 16, 16) for _ in range(8)]
    for _ in range(20):
        m.predict(items)
    ptrs = {b.data_ptr() for b in m._staging if b is not None}
    for i in range(1000):
        m.collect(m.launch(items[: 1 + i % 8]))
    assert {b.data_ptr() for b in m._staging if b is not None} == ptrs
    assert all(b.is_pinned() for b in m._staging if b is not None)


def test_items_already_on_gpu_skip_the_copy() -> None:
    dev = select("0")[0]
    m = TorchModel(_net(), precision="fp32")
    m.setup(dev)
    xs = [torch.randn(3, 16, 16, device=dev.torch) for _ in range(4)]
    out = m.predict(xs)
    with torch.inference_mode():
        ref = m.module(torch.stack(xs)).cpu()
    torch.testing.assert_close(torch.stack(out), ref, rtol=1e-4, atol=1e-4)


def test_cuda_graph_replays_match_eager_for_every_bucket() -> None:
    net = _net()
    xs = [torch.randn(3, 32, 32) for _ in range(200)]
    with torch.inference_mode():
        ref = net(torch.stack(xs))
    model = TorchModel(net, precision="fp32", cuda_graphs=True, batch_buckets=(1, 4, 16))
    with Pool(model, "0", max_batch_size=16, max_wait_ms=1) as pool:
        out = torch.stack(list(pool.map(xs)))
        # odd sizes pad up to a bucket; every row still matches its own input
        odd = torch.stack(list(pool.map(xs[:7], max_in_flight=7)))
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(odd, ref[:7], rtol=1e-3, atol=1e-3)


def test_cuda_graphs_fall_back_to_eager_past_the_largest_bucket() -> None:
    dev = select("0")[0]
    m = TorchModel(_net(), precision="fp32", cuda_graphs=True, batch_buckets=(2,))
    m.setup(dev)
    xs = [torch.randn(3, 16, 16) for _ in range(5)]
    out = m.predict(xs)
    with torch.inference_mode():
        ref = m.module(torch.stack(xs).to(dev.torch)).cpu()
    torch.testing.assert_close(torch.stack(out), ref, rtol=1e-4, atol=1e-4)
    assert len(m._graphs) == 0


def test_a_replacement_pads_small_batches_into_its_captured_bucket_until_the_rest_is_captured() -> None:
    """A restarted worker captures only its largest bucket before serving; until finish_warmup has captured the
    others, a batch of 1 runs padded in that one (no capture stalls it) and answers as eager does."""
    dev = select("0")[0]
    m = TorchModel(_net(), precision="fp32", cuda_graphs=True, batch_buckets=(1, 4, 16),
                   example_shape=(3, 16, 16), warmup_batch_sizes=(1, 4, 16))
    m.defer_warmup = True
    m.setup(dev)
    assert m._capturing and m._graphs is not None
    captured = set(m._graphs._graphs)
    assert {k[0] for k in captured} == {16}
    x = torch.randn(3, 16, 16)
    out = m.predict([x])
    assert set(m._graphs._graphs) == captured  # served from the bucket of 16, nothing captured on demand
    with torch.inference_mode():
        ref = m.module(x[None].to(dev.torch)).cpu()
    torch.testing.assert_close(out[0], ref[0], rtol=1e-4, atol=1e-4)
    m.finish_warmup()
    assert not m._capturing and {k[0] for k in m._graphs._graphs} == {1, 4, 16}
    torch.testing.assert_close(m.predict([x])[0], ref[0], rtol=1e-4, atol=1e-4)


def test_workers_report_weights_and_context_on_their_gpu() -> None:
    with Pool(TorchModel(_net()), "all") as pool:
        for row, dev in zip(pool.stats()["per_worker_stats"], pool.devices, strict=True):
            assert row["weights_on"] == dev.torch and row["context_on"] == dev.torch


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_cuda_graphs_on_every_gpu_of_one_pool() -> None:
    """Thread workers on different GPUs each capture their own graphs (on a stream of their own device) and
    serve correct results; seen failing on 2x H200 before captures were serialised and given a per-device
    stream."""
    net = _net()
    xs = [torch.randn(3, 32, 32) for _ in range(400)]
    with torch.inference_mode():
        ref = net(torch.stack(xs))
    model = TorchModel(net, precision="fp32", cuda_graphs=True, batch_buckets=(1, 4, 16),
                       example_shape=(3, 32, 32), warmup_batch_sizes=(1, 4, 16))
    with Pool(model, "all", max_batch_size=16, max_wait_ms=1) as pool:
        out = torch.stack(list(pool.map(xs)))
        per = [g["total_requests"] for g in pool.stats()["per_gpu_stats"]]
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    assert len(per) == torch.cuda.device_count() and all(n > 0 for n in per)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_jpegs_on_two_gpus_of_one_process_decode_on_one(caplog: pytest.LogCaptureFixture) -> None:
    """torchvision rebuilds its one GPU JPEG decoder whenever another device calls it; the classifier decodes
    every GPU's batches on one device and copies them, so two thread workers give the same answers as one GPU
    (the speed is in docs/scaling.md: JPEG serving on 2 GPUs)."""
    import io
    import logging

    from PIL import Image

    from gpufleet.models.zoo.classifier import ImageClassifier

    rng = torch.Generator().manual_seed(0)
    jpegs = []
    for _ in range(64):
        buf = io.BytesIO()
        img = torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8, generator=rng).numpy()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    make = lambda: ImageClassifier("resnet18", image_size=64, precision="fp32")  # noqa: E731
    with Pool(make(), "0", max_batch_size=16, max_wait_ms=1) as one:
        ref = list(one.map(jpegs))
    caplog.set_level(logging.INFO, logger="gpufleet.models.zoo.classifier")
    with Pool(make(), "0,1", max_batch_size=16, max_wait_ms=1, balancer="round-robin") as two:
        out = list(two.map(jpegs * 4))
        per = [g["total_requests"] for g in two.stats()["per_gpu_stats"]]
    assert [o["class"] for o in out] == [r["class"] for r in ref] * 4
    assert all(n > 0 for n in per)
    assert "JPEGs for cuda:1 decode on cuda:0" in caplog.text


def test_jpegs_prepared_ahead_give_the_answers_of_decoding_in_launch() -> None:
    """The classifier decodes JPEGs in prepare_batch (its own thread and CUDA stream, one batch ahead); the
    same model decoding in launch on the compute stream answers the same, a bad JPEG failing alone."""
    import io

    from PIL import Image

    from gpufleet.models.zoo.classifier import ImageClassifier

    class InLaunch(ImageClassifier):
        prepare_batch = None  # type: ignore[assignment]

    rng = torch.Generator().manual_seed(1)
    jpegs: list = []
    for i in range(200):
        buf = io.BytesIO()
        side = 64 if i % 3 else 80  # some need the resize
        img = torch.randint(0, 256, (side, side, 3), dtype=torch.uint8, generator=rng).numpy()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    jpegs[7] = jpegs[7][:2] + b"\x00" * 64 + jpegs[7][-2:]  # starts and ends like a JPEG, decodes as none
    results = []
    for cls in (ImageClassifier, InLaunch):
        with Pool(cls("resnet18", image_size=64, precision="fp32"), "0", max_batch_size=32, max_wait_ms=2) as pool:
            results.append(list(pool.map(jpegs, return_exceptions=True)))
            stages = pool.stats()["stages"]
    ahead, inline = results
    assert stages["decode"]["count"] > 0  # launch's decode, timed apart in the stats
    assert stages["decode_cpu"]["count"] > 0  # and the CPU time of the launching thread in it
    assert isinstance(ahead[7], Exception) and isinstance(inline[7], Exception)
    for a, b in zip(ahead, inline):
        if not isinstance(a, Exception):
            assert a["class"] == b["class"] and abs(a["score"] - b["score"]) < 1e-4


def test_shared_memory_block_is_pinned_and_read_without_staging() -> None:
    import numpy as np

    from gpufleet.engine.process.child import HostPins
    from gpufleet.engine.process.shm import Attachments, SegmentPool
    from gpufleet.models import StackedBatch

    net = _net()
    xs = torch.randn(16, 3, 32, 32)
    with torch.inference_mode():
        ref = net(xs)
    owner = SegmentPool(f"gpufleet_test_pins_{id(xs):x}_")
    pins = HostPins()
    attach = Attachments(pins.register, pins.unregister)
    try:
        seg = owner.acquire(xs.numel() * 4)
        block = torch.from_numpy(np.ndarray(tuple(xs.shape), np.float32, buffer=attach.get(seg.name).buf))
        block.copy_(xs)
        assert block.is_pinned()  # registered with CUDA: the copy to the GPU is a DMA from the segment
        model = TorchModel(net, precision="fp32")
        model.setup(select("0")[0])
        out = torch.stack(model.predict(StackedBatch(block)))
        torch.testing.assert_close(out, ref.float(), rtol=1e-3, atol=1e-3)
        del block, out
        attach.drop([seg.name])
    finally:
        attach.close()
        owner.close()


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "graphs"])
def test_process_worker_serves_blocks_from_shared_memory(cuda_graphs: bool) -> None:
    net = _net()
    xs = [torch.randn(3, 32, 32) for _ in range(300)]
    with torch.inference_mode():
        ref = net(torch.stack(xs))
    model = TorchModel(net, precision="fp32", cuda_graphs=cuda_graphs)
    with Pool(model, "0", backend="process", max_batch_size=16, max_wait_ms=1) as pool:
        out = torch.stack(list(pool.map(xs)))
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", ["numpy", "bf16", "needs_grad"])
def test_items_stacked_into_staging_give_the_answers_of_the_eager_module(kind: str) -> None:
    dev = select("0")[0]
    net = _net().eval()
    m = TorchModel(copy.deepcopy(net), precision="fp32")
    m.setup(dev)
    xs = [torch.randn(3, 16, 16) for _ in range(6)]
    items: list = xs
    if kind == "numpy":
        items = [x.numpy() for x in xs]
    elif kind == "bf16":
        xs = [x.bfloat16().float() for x in xs]
        items = [x.bfloat16() for x in xs]
    elif kind == "needs_grad":
        items = [x.clone().requires_grad_() for x in xs]
    got = m.predict(items)
    with torch.no_grad():
        want = net(torch.stack(xs))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-3)
