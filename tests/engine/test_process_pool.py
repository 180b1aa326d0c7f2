"""Pool(backend="process") on CPU devices with real child processes: results, arrays through shared memory,
stages in the child, item errors, set-up failures, cancellation, deadlines and progress of long items."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from gpufleet import Pool
from gpufleet.engine.process.shm import leaked_segments
from gpufleet.errors import DeadlineExceeded, InputError, WorkerError
from tests.engine.process_models import (
    BatchSizes,
    BlockAware,
    BlockAwareKeep,
    BlockAwarePlusOne,
    Doubler,
    Echo,
    FailingSetup,
    FailingSetupOnOne,
    MarksPreprocess,
    Overlapping,
    PoolSettings,
    SlowDevice,
    Stages,
    double,
)
from tests.waiting import wait_until as _wait_until

pytestmark = pytest.mark.timeout(120)

OURS = f"gpufleet_{os.getpid():x}"  # every segment a pool of this test process creates starts so




@pytest.fixture(scope="module")
def pool():
    with Pool(Doubler, cpu_devices=2, backend="process", max_wait_ms=2) as p:
        yield p


def test_results_correct_and_served_by_two_child_processes(pool) -> None:
    assert list(pool.map(range(300))) == [2 * x for x in range(300)]
    pids = {pool.submit("pid").result(timeout=30) for _ in range(20)} | {w.pid for w in pool.workers}
    assert os.getpid() not in pids and len({w.pid for w in pool.workers}) == 2
    st = pool.stats()
    assert st["backend"] == "process" and st["total_requests"] >= 300
    assert all(g["total_requests"] > 0 for g in st["per_gpu_stats"])
    assert "predict" in st["stages"] and "e2e" in st["stages"]
    assert {b["state"] for b in pool.health()["backends"]} == {"closed"}


def test_device_label_kept_for_cpu_devices(pool) -> None:
    labels = {pool.submit("device").result(timeout=30) for _ in range(30)}
    assert labels <= {"cpu:0", "cpu:1"} and labels


def test_model_errors_keep_their_class(pool) -> None:
    with pytest.raises(InputError, match="bad item"):
        pool.submit("bad").result(timeout=30)
    with pytest.raises(WorkerError, match="predict failed: TypeError"):
        pool.submit(None).result(timeout=30)
    assert pool.submit(4).result(timeout=30) == 8


def test_arrays_bit_exact_through_shared_memory_and_no_leak() -> None:
    rng = np.random.default_rng(1)
    items = [rng.integers(0, 256, (3, 224, 224), dtype=np.uint8), rng.standard_normal((2, 3)),
             rng.standard_normal((512, 1024)).astype(np.float32), np.arange(7, dtype=np.int16),
             torch.randn(4, 64, 64), {"image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "id": 3},
             b"\xff" * 300_000, (1, "two")]
    with Pool(Echo, cpu_devices=2, backend="process") as p:
        for _ in range(3):  # segments are reused across batches
            out = list(p.map(items * 4))
        prefix = p.workers[0]._prefix
        assert leaked_segments(prefix)  # the parent's segments exist while the pool runs
    for a, b in zip(items * 4, out):
        if isinstance(a, np.ndarray):
            assert b.dtype == a.dtype and b.shape == a.shape and a.tobytes() == b.tobytes()
        elif isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
        elif isinstance(a, dict):
            assert b["id"] == 3 and np.array_equal(a["image"], b["image"])
        else:
            assert a == b
    assert leaked_segments(OURS) == []


def test_stages_run_in_the_child_and_fail_per_item() -> None:
    with Pool(Stages, cpu_devices=1, workers_per_device=2, backend="process") as p:
        futs = [p.submit(x) for x in ("a", "undecodable", "b", "post-fail", "c")]
        res = [f.exception(timeout=30) or f.result() for f in futs]
    assert isinstance(res[1], InputError) and "cannot decode" in str(res[1])
    assert isinstance(res[3], WorkerError) and "postprocess failed" in str(res[3])
    for r, x in zip((res[0], res[2], res[4]), "abc"):
        assert r["x"] == x and r["pre"] == r["predict"] == r["post"] != os.getpid()


def test_child_keeps_two_batches_in_flight_for_launch_collect_models() -> None:
    with Pool(Overlapping, cpu_devices=1, backend="process", max_batch_size=4, max_wait_ms=1) as pool:
        out = list(pool.map(range(80)))
    assert [x for x, _ in out] == [2 * i for i in range(80)]
    assert max(o for _, o in out) >= 1  # a later batch was launched before an earlier one was collected


def test_the_child_reports_launch_collect_and_its_idle_time() -> None:
    with Pool(Overlapping, cpu_devices=1, backend="process", max_batch_size=4, max_wait_ms=0) as pool:
        assert [x for x, _ in pool.map(range(8))] == [2 * i for i in range(8)]
        time.sleep(0.3)  # nothing to serve: the child waits for a batch
        assert [x for x, _ in pool.map(range(4))] == [0, 2, 4, 6]  # its next answer reports the wait
        stats = pool.stats()
    stages = stats["stages"]
    assert stages["collect"]["p50_ms"] >= 8 and stages["launch"]["p50_ms"] < stages["collect"]["p50_ms"]
    assert stages["collect"]["count"] == stages["predict"]["count"] == stats["total_batches"]
    assert stats["per_worker_stats"][0]["idle_s"] >= 0.25


def test_child_launches_a_batch_that_comes_while_the_device_is_busy() -> None:
    with Pool(SlowDevice, cpu_devices=1, backend="process", max_batch_size=4, max_wait_ms=1) as pool:
        pool.submit(-1).result(timeout=30)  # the child is up and idle
        first = [pool.submit(i) for i in range(4)]
        time.sleep(0.03)  # the first batch is on the "device" (0.2 s), nothing else queued in the child
        second = [pool.submit(i) for i in range(4, 8)]
        out = [f.result(timeout=30) for f in first + second]
    assert [x for x, _ in out] == [2 * i for i in range(8)]
    assert out[0][1] == 1  # the second batch was launched before the first was collected, not after


def test_a_partial_batch_keeps_filling_while_the_child_is_busy() -> None:
    with Pool(BatchSizes, cpu_devices=1, backend="process", max_batch_size=8, max_wait_ms=1,
              pipeline_depth=1) as pool:
        pool.submit(0).result(timeout=30)  # the child is up and idle
        first = pool.submit(1)  # runs alone for 0.4 s
        time.sleep(0.05)
        rest = []
        for i in range(5):
            rest.append(pool.submit(i))
            time.sleep(0.01)
        sizes = [f.result(timeout=30) for f in [first, *rest]]
    assert sizes == [1, 5, 5, 5, 5, 5]  # not [1, 1, 4, 4, 4, 4]: the next batch was not cut at its first item


def test_child_skips_preprocess_for_items_preprocessed_elsewhere() -> None:
    with Pool(MarksPreprocess, cpu_devices=1, backend="process", max_batch_size=16, max_wait_ms=20) as pool:
        futs = [pool.submit(i, preprocessed=i % 2 == 1) for i in range(10)]  # one batch: both kinds mixed
        out = [f.result(timeout=30) for f in futs]
    assert out == [(i % 2 == 0, i) for i in range(10)]


def test_module_level_function_model() -> None:
    with Pool(double, cpu_devices=1, backend="process") as p:
        assert p.submit(21).result(timeout=30) == 42


def test_setup_failure_raises_with_the_child_error() -> None:
    with pytest.raises(WorkerError, match="failed in setup: RuntimeError: weights missing on cpu:0"):
        Pool(FailingSetup, cpu_devices=1, backend="process")
    assert leaked_segments(OURS) == []


def test_degraded_start_shows_in_health() -> None:
    with Pool(FailingSetupOnOne, cpu_devices=2, backend="process", allow_degraded=True) as p:
        h = p.health()
        assert h["healthy"] and h["healthy_count"] == 1
        bad = h["backends"][1]
        assert not bad["healthy"] and "device 1 is broken" in bad["error"]
        assert list(p.map(range(20))) == list(range(1, 21))


def test_long_items_cancel_deadline_and_progress_do_not_block_others() -> None:
    seen: list[float] = []
    with Pool(Doubler, cpu_devices=1, workers_per_device=2, backend="process", max_batch_size=1,
              pipeline_depth=1) as p:
        slow_a = p.submit(("sleep", 1.0, "a"), progress=seen.append)
        slow_b = p.submit(("sleep", 1.0, "b"))
        assert wait_until(lambda: all(w.outstanding and not len(w.batcher) for w in p.workers), 10)
        queued = p.submit(5)  # both workers busy: it waits in a batcher
        assert queued.cancel()
        # The children's progress shows in the stats while they serve (and is gone once answered).
        assert wait_until(lambda: any(w["progress"] for w in p.stats()["per_worker_stats"]), 10)
        assert slow_a.result(timeout=30) == "a" and slow_b.result(timeout=30) == "b"
        assert wait_until(lambda: len(seen) == 4, 10) and seen == [0.25, 0.5, 0.75, 1.0]
        assert [w["progress"] for w in p.stats()["per_worker_stats"]] == [None, None]
        # A running item past its deadline fails at once; the other worker keeps serving meanwhile.
        late = p.submit(("sleep", 3.0, "x"), timeout_s=0.3)
        assert [p.submit(i).result(timeout=30) for i in range(5)] == [0, 2, 4, 6, 8]
        with pytest.raises(DeadlineExceeded, match="running on worker"):
            late.result(timeout=30)
        assert queued.cancelled()
        assert wait_until(lambda: p.outstanding == 0, 10)  # cancelled and expired items freed their slots
        assert p.stats()["errors"] >= 1


def test_sticky_cuda_error_recycles_the_process() -> None:
    with Pool(Doubler, cpu_devices=1, workers_per_device=2, backend="process", max_retries=1,
              restart_backoff_s=0.05, breaker_threshold=10) as p:
        pids = {w.pid for w in p.workers}
        with pytest.raises(WorkerError, match="sticky CUDA error.*gave up after 2 attempt"):
            p.submit("sticky").result(timeout=60)
        assert wait_until(lambda: all(w.healthy for w in p.workers), 60)
        assert p.stats()["restarts"] >= 2 and {w.pid for w in p.workers}.isdisjoint(pids)
        assert list(p.map(range(10))) == [2 * x for x in range(10)]


def test_close_without_drain_fails_inflight_and_stops_children() -> None:
    p = Pool(Doubler, cpu_devices=1, backend="process", max_batch_size=1, pipeline_depth=1)
    running = p.submit(("sleep", 30.0, "never"))
    waiting = p.submit(2)  # sent too: one batch waits, encoded, in the pipe
    queued = p.submit(1)
    assert wait_until(lambda: len(p.workers[0].batcher) == 1 and len(p.workers[0].link.inflight) == 2, 10)
    procs = [w._proc for w in p.workers]
    t = threading.Thread(target=p.close, kwargs={"drain": False})
    t.start()
    t.join(60)
    assert not t.is_alive()
    assert all(f.exception(timeout=5) is not None for f in (running, waiting, queued))
    assert not any(pr.is_alive() for pr in procs)
    assert leaked_segments(OURS) == []


def wait_until(cond, timeout: float = 30.0) -> bool:
    return _wait_until(cond, timeout)


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_workers_tell_the_model_the_pools_max_batch_and_buckets(backend: str) -> None:
    # A process worker's classifier once captured CUDA graphs up to 64 only while serving batches up to 128.
    with Pool(PoolSettings, "cpu", cpu_devices=1, backend=backend, max_batch_size=96,
              batch_buckets=(8, 32, 96)) as pool:
        assert pool.submit(1).result(timeout=60) == (96, (8, 32, 96))


def _served_in_one_batch(model, items: list) -> list:
    with Pool(model, cpu_devices=1, backend="process", max_batch_size=len(items), max_wait_ms=500) as p:
        return [f.result(timeout=30) for f in [p.submit(x) for x in items]]


@pytest.mark.parametrize("make", [lambda a: torch.from_numpy(a), lambda a: a], ids=["tensors", "arrays"])
def test_items_of_one_shape_reach_the_model_as_one_block(make) -> None:
    rng = np.random.default_rng(3)
    raw = [rng.integers(0, 256, (3, 48, 48), dtype=np.uint8) for _ in range(6)]  # > INLINE_MAX each
    out = _served_in_one_batch(BlockAware, [make(a) for a in raw])
    assert out == [(int(a.sum()), True) for a in raw]  # each row is its own item, in order
    out = _served_in_one_batch(BlockAwareKeep, [make(a) for a in raw])
    assert out == [(int(a.sum()), True) for a in raw]  # an identity preprocess keeps the block


def test_items_that_differ_or_change_are_sent_one_by_one() -> None:
    rng = np.random.default_rng(4)
    same = [torch.from_numpy(rng.integers(0, 100, (3, 32, 32), dtype=np.int64)) for _ in range(4)]
    out = _served_in_one_batch(BlockAwarePlusOne, same)  # new items from preprocess: never the stale block
    assert out == [(int(t.sum()) + t.numel(), False) for t in same]
    mixed = [same[0], same[1][:, :16], same[2]]  # shapes differ
    assert _served_in_one_batch(BlockAware, mixed) == [(int(t.sum()), False) for t in mixed]


def test_child_unmaps_the_segments_the_parent_unlinked() -> None:
    # Items of doubling size make the parent create segments of 1, 2, 4, 8 and 16 MB; it keeps four free ones
    # and unlinks the smallest. The child must unmap it too (it is told with the next batch), or a long-running
    # child would keep every segment ever used mapped (and, on a GPU, pinned).
    sizes = [600_000, 1_200_000, 2_400_000, 4_800_000, 9_600_000, 100_000]
    with Pool(BlockAware, cpu_devices=1, backend="process", max_batch_size=1, max_wait_ms=1) as pool:
        for n in sizes:
            pool.submit(np.ones(n, np.uint8)).result(timeout=30)
        pid, prefix = pool.workers[0].pid, pool.workers[0]._prefix
        with open(f"/proc/{pid}/maps") as f:
            maps = [line for line in f if f"{prefix}p" in line]
    assert maps  # the child maps the parent's live segments
    assert not [line for line in maps if "(deleted)" in line]  # and nothing the parent unlinked


def test_a_spare_prepares_an_embedded_model_given_by_name(monkeypatch) -> None:
    """``gpufleet serve resnet50`` sends the model's name: the spare resolves it to run its ``prepare_spare``."""
    from gpufleet.engine.process import child
    from gpufleet.models.zoo.classifier import ImageClassifier

    calls: list[str] = []
    monkeypatch.setattr(ImageClassifier, "prepare_spare", lambda self: calls.append(self.name))
    child._prepare_spare("resnet18")
    assert calls == ["resnet18"]
