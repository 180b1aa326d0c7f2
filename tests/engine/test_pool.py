"""Pool on CPU devices with real worker threads: batching, ordering, balancing, failures, shutdown, stats."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import wait

import pytest
import torch

from gpufleet import Pool, PoolConfig
from gpufleet.config import env_overrides
from gpufleet.devices import Device
from gpufleet.errors import (
    ConfigError,
    DeadlineExceeded,
    InputError,
    PoolClosed,
    QueueFullError,
    WorkerError,
)
from gpufleet.models import Model
from tests.waiting import wait_until as _wait_until

ENVS = ("GPU_IDS", "GPUFLEET_GPUS", "GPUFLEET_CPU_DEVICES", "CUDA_VISIBLE_DEVICES")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENVS:
        monkeypatch.delenv(name, raising=False)


def double(batch: list) -> list:
    return [x * 2 for x in batch]


class Gate:
    """Blocks ``predict`` on a chosen item until the test releases it (never longer than 10 s)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def hold(self) -> None:
        self.started.set()
        assert self.release.wait(10), "gate never released"


def gated(gate: Gate, fn: Callable[[list], list] = double, key: object = "gate") -> Callable[[list], list]:
    """A model that holds on the batch containing ``key`` (answering ``key`` with itself)."""

    def predict(batch: list) -> list:
        if key in batch:
            gate.hold()
            return [x if x == key else fn([x])[0] for x in batch]
        return fn(batch)

    return predict




class ByDevice(Model):
    """Sleeps ``per_item[device.index]`` seconds per item (plus ``per_batch``) — a slower or faster 'GPU'."""

    per_item: dict[int, float] = {}
    per_batch: dict[int, float] = {}

    def setup(self, device: Device) -> None:
        self.device = device

    def predict(self, batch: list) -> list:
        i = self.device.index
        time.sleep(self.per_batch.get(i, 0.0) + self.per_item.get(i, 0.0) * len(batch))
        return [x * 2 for x in batch]


# -- batching ---------------------------------------------------------------------------------------------
def _recording(sizes: list[int]):
    """``double`` that takes 10 ms a batch and appends each batch's size to ``sizes``."""

    def model(batch: list) -> list:
        sizes.append(len(batch))
        time.sleep(0.01)
        return double(batch)

    return model


@pytest.mark.timeout(30)
def test_batches_fill_to_max_size_under_load() -> None:
    sizes: list[int] = []
    model = _recording(sizes)
    with Pool(model, cpu_devices=1, max_batch_size=8, max_wait_ms=50) as pool:
        futs = [pool.submit(i) for i in range(80)]
        assert [f.result(timeout=10) for f in futs] == [2 * i for i in range(80)]
        stats = pool.stats()
    assert max(sizes) == 8
    assert sum(sizes) == 80
    assert sizes.count(8) >= 7  # a backlog is served in full batches (first/last may be partial)
    assert stats["per_gpu_stats"][0]["avg_batch_size"] >= 6
    assert stats["total_batches"] == len(sizes)


def test_configure_changes_batching_while_serving() -> None:
    sizes: list[int] = []
    model = _recording(sizes)
    with Pool(model, cpu_devices=1, max_batch_size=8, max_wait_ms=50) as pool:
        now = pool.configure(max_batch_size=3, max_wait_ms=20)
        assert now == {"max_batch_size": 3, "max_wait_ms": 20.0, "max_batch_size_limit": 8}
        futs = [pool.submit(i) for i in range(30)]
        assert [f.result(timeout=10) for f in futs] == [2 * i for i in range(30)]
        assert max(sizes) == 3 and sizes.count(3) >= 8
        stats = pool.stats()
        assert stats["max_batch_size"] == 3 and stats["max_wait_ms"] == 20.0
        with pytest.raises(ConfigError, match=r"within 1\.\.8 .*needs a new pool"):
            pool.configure(max_batch_size=9)  # the workers were set up for 8
        with pytest.raises(ConfigError, match="max_wait_ms"):
            pool.configure(max_wait_ms=-1)
        pool.configure(max_batch_size=8)
        sizes.clear()
        futs = [pool.submit(i) for i in range(40)]
        assert [f.result(timeout=10) for f in futs] == [2 * i for i in range(40)] and max(sizes) == 8


@pytest.mark.timeout(30)
def test_trickle_gives_batches_of_about_one() -> None:
    with Pool(double, cpu_devices=1, max_batch_size=8, max_wait_ms=2) as pool:
        futs = []
        for i in range(25):
            futs.append(pool.submit(i))
            time.sleep(0.02)
        assert [f.result(timeout=10) for f in futs] == [2 * i for i in range(25)]
        stats = pool.stats()
    assert stats["total_requests"] == 25
    assert stats["avg_batch_size"] <= 1.5


# -- submit / map / infer ---------------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("n_devices", [2, 4])
def test_ordered_map_keeps_input_order_under_random_delays(n_devices: int) -> None:
    def jittery(batch: list) -> list:
        time.sleep(random.uniform(0, 0.004))
        return double(batch)

    with Pool(jittery, cpu_devices=n_devices, max_batch_size=4, max_wait_ms=1) as pool:
        assert list(pool.map(range(300))) == [2 * i for i in range(300)]
        assert list(pool.map(range(50), max_in_flight=3)) == [2 * i for i in range(50)]


@pytest.mark.timeout(30)
def test_unordered_map_returns_every_result() -> None:
    def jittery(batch: list) -> list:
        time.sleep(random.uniform(0, 0.004))
        return double(batch)

    with Pool(jittery, cpu_devices=3, max_batch_size=4, max_wait_ms=1) as pool:
        out = list(pool.map(range(200), ordered=False))
    assert sorted(out) == [2 * i for i in range(200)]


@pytest.mark.timeout(30)
def test_map_consumes_a_generator_lazily() -> None:
    pulled = 0

    def gen():
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield i

    with Pool(double, cpu_devices=2, max_batch_size=4) as pool:
        it = pool.map(gen(), max_in_flight=16)
        assert [next(it) for _ in range(5)] == [0, 2, 4, 6, 8]
        assert pulled <= 32  # bounded in flight, not the whole iterator
        it.close()


@pytest.mark.timeout(30)
def test_map_return_exceptions_yields_the_error_in_place() -> None:
    def model(batch: list) -> list:
        if any(x == 3 for x in batch):
            raise ValueError("three")
        return double(batch)

    with Pool(model, cpu_devices=1, max_batch_size=1) as pool:
        out = list(pool.map(range(6), return_exceptions=True))
        assert out[:3] == [0, 2, 4] and out[4:] == [8, 10]
        assert isinstance(out[3], WorkerError)
        with pytest.raises(WorkerError):
            list(pool.map(range(6)))


@pytest.mark.timeout(30)
def test_submit_returns_futures() -> None:
    with Pool(double, cpu_devices=2) as pool:
        futs = [pool.submit(i) for i in range(50)]
        assert [f.result(timeout=10) for f in futs] == [2 * i for i in range(50)]
        assert pool(21) == 42


@pytest.mark.timeout(30)
def test_async_infer() -> None:
    async def main() -> list:
        async with Pool(double, cpu_devices=2, max_batch_size=4) as pool:
            return await asyncio.gather(*(pool.infer(i) for i in range(40)))

    assert asyncio.run(main()) == [2 * i for i in range(40)]


@pytest.mark.timeout(30)
def test_async_infer_raises_pool_errors() -> None:
    def boom(batch: list) -> list:
        raise RuntimeError("bad model")

    async def main() -> None:
        async with Pool(boom, cpu_devices=1) as pool:
            with pytest.raises(WorkerError):
                await pool.infer(1)

    asyncio.run(main())


# -- balancing --------------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_queue_depth_beats_round_robin_with_a_slow_device() -> None:
    class SlowOne(ByDevice):
        per_batch = {0: 0.002, 1: 0.025}

    def run(balancer: str) -> float:
        with Pool(SlowOne, cpu_devices=2, max_batch_size=1, max_wait_ms=0, balancer=balancer) as pool:
            t0 = time.monotonic()
            out = list(pool.map(range(80), ordered=False, max_in_flight=8))
            elapsed = time.monotonic() - t0
        assert sorted(out) == [2 * i for i in range(80)]
        return elapsed

    rr = run("round-robin")  # half the items wait on the slow device: ~40 × 25 ms
    qd = run("queue-depth")
    assert qd < 0.6 * rr, f"queue-depth {qd:.3f}s vs round-robin {rr:.3f}s"


@pytest.mark.timeout(30)
def test_speed_balancer_shares_work_by_device_speed() -> None:
    class ThreeTimes(ByDevice):
        per_item = {0: 0.002, 1: 0.006}

    with Pool(ThreeTimes, cpu_devices=2, max_batch_size=8, max_wait_ms=1, balancer="speed") as pool:
        out = list(pool.map(range(400), ordered=False))
        per_gpu = pool.stats()["per_gpu_stats"]
    assert sorted(out) == [2 * i for i in range(400)]
    fast, slow = per_gpu[0]["total_requests"], per_gpu[1]["total_requests"]
    assert fast + slow == 400
    assert 2.0 <= fast / max(slow, 1) <= 4.5, f"fast {fast}, slow {slow}"


@pytest.mark.timeout(30)
def test_set_enabled_stops_routing_to_a_device() -> None:
    with Pool(double, cpu_devices=2, balancer="round-robin") as pool:
        assert pool.set_enabled("cpu:1", False) == [1]
        assert list(pool.map(range(20))) == [2 * i for i in range(20)]
        per_gpu = pool.stats()["per_gpu_stats"]
        assert [g["total_requests"] for g in per_gpu] == [20, 0]
        assert [b["enabled"] for b in pool.health()["backends"]] == [True, False]
        pool.set_enabled("cpu:1", True)
        assert list(pool.map(range(20))) == [2 * i for i in range(20)]
        assert pool.stats()["per_gpu_stats"][1]["total_requests"] == 10
        with pytest.raises(ConfigError, match="cpu:7"):
            pool.set_enabled("cpu:7", False)


# -- out of memory ----------------------------------------------------------------------------------------
def oom_above(limit: int, sleep: float = 0.0) -> Callable[[list], list]:
    def predict(batch: list) -> list:
        if len(batch) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        time.sleep(sleep)
        return double(batch)

    return predict


@pytest.mark.timeout(30)
def test_oom_splits_batches_and_lowers_max_batch() -> None:
    gate = Gate()
    with Pool(gated(gate, oom_above(4)), cpu_devices=1, max_batch_size=16, max_wait_ms=20) as pool:
        try:
            first = pool.submit("gate")
            assert gate.started.wait(10)
            futs = [pool.submit(i) for i in range(64)]  # a backlog: the next batch has 16 items
        finally:
            gate.release.set()
        assert first.result(timeout=10) == "gate"
        assert [f.result(timeout=10) for f in futs] == [2 * i for i in range(64)]
        stats = pool.stats()
    assert stats["oom_events"] > 0
    assert stats["errors"] == 0
    assert stats["per_worker_stats"][0]["max_batch_size"] <= 4


@pytest.mark.timeout(30)
def test_oom_on_a_single_item_fails_that_item() -> None:
    def always_oom(batch: list) -> list:
        if "huge" in batch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return double(batch)

    with Pool(always_oom, cpu_devices=1, max_batch_size=8) as pool:
        f = pool.submit("huge")
        with pytest.raises(WorkerError, match="out of memory") as info:
            f.result(timeout=10)
        assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)
        assert pool.submit(5).result(timeout=10) == 10  # the worker keeps serving
        assert pool.stats()["oom_events"] >= 1


@pytest.mark.timeout(30)
def test_probe_picks_a_batch_size_that_fits() -> None:
    with Pool(oom_above(8, sleep=0.01), cpu_devices=1, max_batch_size=0, max_probe_batch=64) as pool:
        assert list(pool.map(range(40))) == [2 * i for i in range(40)]
        chosen = pool.stats()["per_worker_stats"][0]["max_batch_size"]
    assert 1 <= chosen <= 8


# -- admission, deadlines, errors -------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_queue_full_then_everything_answered() -> None:
    gate = Gate()
    with Pool(gated(gate), cpu_devices=1, max_batch_size=1, max_queue=3) as pool:
        try:
            futs = [pool.submit("gate")]
            assert gate.started.wait(10)
            futs += [pool.submit(1), pool.submit(2)]
            with pytest.raises(QueueFullError, match="max_queue=3"):
                pool.submit(3)
        finally:
            gate.release.set()
        assert [f.result(timeout=10) for f in futs] == ["gate", 2, 4]
        assert wait_until(lambda: pool.outstanding == 0)
        assert pool.submit(3).result(timeout=10) == 6  # room again


@pytest.mark.timeout(30)
def test_deadline_exceeded_behind_a_slow_batch() -> None:
    gate = Gate()
    with Pool(gated(gate), cpu_devices=1, max_batch_size=1) as pool:
        try:
            slow = pool.submit("gate")
            assert gate.started.wait(10)
            late = [pool.submit(i, timeout_s=0.05) for i in range(3)]
            patient = pool.submit(7)
            time.sleep(0.2)
        finally:
            gate.release.set()
        assert slow.result(timeout=10) == "gate"
        for f in late:
            with pytest.raises(DeadlineExceeded):
                f.result(timeout=10)
        assert patient.result(timeout=10) == 14
        assert wait_until(lambda: pool.outstanding == 0)


@pytest.mark.timeout(30)
def test_default_timeout_from_config() -> None:
    gate = Gate()
    with Pool(gated(gate), cpu_devices=1, max_batch_size=1, timeout_s=0.05) as pool:
        try:
            pool.submit("gate", timeout_s=30)
            assert gate.started.wait(10)
            late = pool.submit(1)
            time.sleep(0.2)
        finally:
            gate.release.set()
        with pytest.raises(DeadlineExceeded):
            late.result(timeout=10)


@pytest.mark.timeout(30)
def test_predict_exception_fails_only_its_item() -> None:
    """A model error on a batch is isolated: the batch is served again in halves, so only the item the model
    fails on gets the error, not the neighbours it was batched with."""
    gate = Gate()

    def model(batch: list) -> list:
        if -1 in batch:
            raise ValueError("boom")
        return double(batch)

    with Pool(gated(gate, model), cpu_devices=1, max_batch_size=4, max_wait_ms=0) as pool:
        try:
            pool.submit("gate")
            assert gate.started.wait(10)
            bad_batch = [pool.submit(x) for x in (-1, 1, 2, 3)]  # queued together: one batch of 4
        finally:
            gate.release.set()
        with pytest.raises(WorkerError, match="boom") as info:
            bad_batch[0].result(timeout=10)
        assert isinstance(info.value.__cause__, ValueError)
        assert [f.result(timeout=10) for f in bad_batch[1:]] == [2, 4, 6]
        assert [pool.submit(x).result(timeout=10) for x in (5, 6)] == [10, 12]
        stats = pool.stats()
        assert stats["errors"] == 1 and stats["isolated_batches"] >= 1
        assert pool.health()["healthy"]


@pytest.mark.timeout(30)
def test_wrong_length_output_is_a_worker_error() -> None:
    with Pool(lambda batch: batch[:-1], cpu_devices=1) as pool:
        with pytest.raises(WorkerError, match="same length"):
            pool.submit(1).result(timeout=10)
    with Pool(lambda batch: None, cpu_devices=1) as pool:
        with pytest.raises(WorkerError, match="NoneType"):
            pool.submit(1).result(timeout=10)


class Stages(Model):
    """Preprocess parses, predict doubles, postprocess wraps each output."""

    def preprocess(self, item: object) -> int:
        if item == "bad":
            raise ValueError("cannot parse 'bad'")
        return int(item)

    def predict(self, batch: list) -> list:
        return [x * 2 for x in batch]

    def postprocess(self, output: int) -> dict:
        return {"value": output}


@pytest.mark.timeout(30)
def test_preprocess_error_fails_only_that_item() -> None:
    with Pool(Stages, cpu_devices=2, max_batch_size=4) as pool:
        futs = [pool.submit(x) for x in ("1", "bad", "3")]
        assert futs[0].result(timeout=10) == {"value": 2}
        with pytest.raises(InputError, match="bad") as info:
            futs[1].result(timeout=10)
        assert isinstance(info.value.__cause__, ValueError)
        assert futs[2].result(timeout=10) == {"value": 6}
        assert wait_until(lambda: pool.outstanding == 0)


class WhereIsPreprocess(Model):
    """Records which thread ran each preprocess; items that say "slow" take 5 ms."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def preprocess(self, item: object) -> object:
        if item == "slow":
            time.sleep(0.005)
        self.threads.append(threading.get_ident())
        return item

    def predict(self, batch: list) -> list:
        return batch


@pytest.mark.timeout(30)
def test_cheap_preprocess_runs_in_the_submitting_thread_and_a_slow_one_goes_back() -> None:
    model = WhereIsPreprocess()
    with Pool(model, cpu_devices=2, max_batch_size=4, max_wait_ms=1) as pool:
        seen = pool.workers[0].model, pool.workers[1].model
        me = threading.get_ident()
        for i in range(40):  # measured on pool threads first, one at a time so each sample is in
            pool.submit(i).result(timeout=10)
        assert pool._placing.inline
        before = [len(m.threads) for m in seen]
        assert [pool.submit(i).result(timeout=10) for i in range(10)] == list(range(10))
        assert [t for m, b in zip(seen, before) for t in m.threads[b:]] == [me] * 10
        assert pool.submit("slow").result(timeout=10) == "slow"  # inline once, then off the caller's thread
        assert not pool._placing.inline
        assert pool.stats()["stages"]["preprocess"]["count"] == 51


@pytest.mark.timeout(30)
def test_postprocess_runs_per_item() -> None:
    with Pool(Stages, cpu_devices=2, max_batch_size=8) as pool:
        assert list(pool.map([str(i) for i in range(30)])) == [{"value": 2 * i} for i in range(30)]
        stages = pool.stats()["stages"]
    assert stages["preprocess"]["count"] == 30
    assert stages["postprocess"]["count"] >= 1


@pytest.mark.timeout(30)
def test_cancelled_future_is_skipped() -> None:
    gate = Gate()
    seen: list = []

    def model(batch: list) -> list:
        seen.extend(batch)
        return double(batch)

    with Pool(gated(gate, model), cpu_devices=1, max_batch_size=1) as pool:
        try:
            first = pool.submit("gate")
            assert gate.started.wait(10)
            skipped = pool.submit(100)
            assert skipped.cancel()
        finally:
            gate.release.set()
        assert first.result(timeout=10) == "gate"
        assert pool.submit(1).result(timeout=10) == 2
        assert wait_until(lambda: pool.outstanding == 0)
    assert skipped.cancelled()
    assert 100 not in seen


# -- shutdown ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", [double, Stages], ids=["plain", "pre-post"])
def test_close_drain_loses_nothing(model: object) -> None:
    pool = Pool(model, cpu_devices=2, max_batch_size=16)
    items = [str(i) for i in range(1000)] if model is Stages else list(range(1000))
    futs = [pool.submit(x) for x in items]
    pool.close(drain=True)
    assert all(f.done() for f in futs)
    want = [{"value": 2 * i} for i in range(1000)] if model is Stages else [2 * i for i in range(1000)]
    assert [f.result() for f in futs] == want
    assert pool.stats()["total_requests"] == 1000
    with pytest.raises(PoolClosed):
        pool.submit(1)
    with pytest.raises(PoolClosed):
        list(pool.map([1]))
    pool.close()  # idempotent
    assert not pool.ready


@pytest.mark.timeout(30)
def test_submit_while_draining_is_refused() -> None:
    gate = Gate()
    pool = Pool(gated(gate), cpu_devices=1, max_batch_size=1)
    try:
        held = pool.submit("gate")
        assert gate.started.wait(10)
        closer = threading.Thread(target=pool.close)
        closer.start()
        assert wait_until(lambda: pool.health()["draining"])
        with pytest.raises(PoolClosed):
            pool.submit(1)
    finally:
        gate.release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert held.result(timeout=1) == "gate"


@pytest.mark.timeout(30)
def test_close_without_drain_fails_pending_items() -> None:
    gate = Gate()
    pool = Pool(gated(gate), cpu_devices=1, max_batch_size=1)
    try:
        running = pool.submit("gate")
        assert gate.started.wait(10)
        pending = [pool.submit(i) for i in range(20)]
        closer = threading.Thread(target=pool.close, kwargs={"drain": False})
        closer.start()
        done, not_done = wait(pending, timeout=10)
        assert not not_done
    finally:
        gate.release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert running.result(timeout=5) == "gate"
    for f in pending:
        with pytest.raises(PoolClosed):
            f.result(timeout=0)
    with pytest.raises(PoolClosed):
        pool.submit(1)


@pytest.mark.timeout(30)
def test_context_manager_with_error_does_not_hang() -> None:
    with pytest.raises(KeyError):
        with Pool(double, cpu_devices=2) as pool:
            pool.submit(1)
            raise KeyError("user code failed")
    assert not pool.ready


# -- start-up ---------------------------------------------------------------------------------------------
class FailsOn(Model):
    bad: tuple[int, ...] = ()

    def setup(self, device: Device) -> None:
        if device.index in self.bad:
            raise RuntimeError(f"no weights for {device.label}")
        self.device = device

    def predict(self, batch: list) -> list:
        return [(self.device.index, x) for x in batch]


@pytest.mark.timeout(30)
def test_setup_failure_raises_worker_error() -> None:
    class AllFail(FailsOn):
        bad = (0, 1)

    with pytest.raises(WorkerError, match="no weights") as info:
        Pool(AllFail, cpu_devices=2)
    assert isinstance(info.value.__cause__, RuntimeError)

    class OneFails(FailsOn):
        bad = (1,)

    with pytest.raises(WorkerError, match="cpu:1"):
        Pool(OneFails, cpu_devices=2)


@pytest.mark.timeout(30)
def test_allow_degraded_serves_on_healthy_devices() -> None:
    class OneFails(FailsOn):
        bad = (1,)

    with Pool(OneFails, cpu_devices=2, allow_degraded=True) as pool:
        h = pool.health()
        assert h["healthy"] and h["ready"]
        assert (h["total_backends"], h["healthy_count"]) == (2, 1)
        bad = [b for b in h["backends"] if not b["healthy"]]
        assert [b["device"] for b in bad] == ["cpu:1"]
        assert "no weights" in bad[0]["error"]
        assert list(pool.map(range(10))) == [(0, i) for i in range(10)]


@pytest.mark.timeout(30)
def test_model_instance_is_copied_per_worker() -> None:
    class Where(Model):
        def __init__(self) -> None:
            self.device: Device | None = None

        def setup(self, device: Device) -> None:
            self.device = device

        def predict(self, batch: list) -> list:
            assert self.device is not None
            return [(self.device.index, id(self)) for _ in batch]

    template = Where()
    with Pool(template, cpu_devices=3, balancer="round-robin", max_batch_size=1) as pool:
        out = list(pool.map(range(30)))
        models = [w.model for w in pool.workers]
    assert template.device is None  # the caller's instance is never set up
    assert {d for d, _ in out} == {0, 1, 2}
    assert len({m for _, m in out}) == 3
    assert id(template) not in {m for _, m in out}
    assert [m.device.index for m in models] == [0, 1, 2]


# -- stats and health -------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_stats_schema() -> None:
    with Pool(Stages, cpu_devices=2, max_batch_size=4) as pool:
        list(pool.map([str(i) for i in range(40)]))
        s = pool.stats()
        h = pool.health()
    assert s["num_gpus"] == 2 and s["num_workers"] == 2 and s["balancer"] == "queue-depth"
    assert s["total_requests"] == 40 and s["errors"] == 0 and s["queue_depth"] == 0
    assert s["throughput_rps"] > 0
    assert len(s["per_gpu_stats"]) == 2
    for i, g in enumerate(s["per_gpu_stats"]):
        for key in ("gpu_id", "current_queue_depth", "total_requests", "total_batches", "avg_batch_size"):
            assert key in g
        assert g["gpu_id"] == i
        assert g["current_queue_depth"] == 0
        assert g["total_batches"] == 0 or 1 <= g["avg_batch_size"] <= 4
    assert sum(g["total_requests"] for g in s["per_gpu_stats"]) == 40
    for stage in ("queue_wait", "preprocess", "predict", "postprocess", "e2e"):
        entry = s["stages"][stage]
        for key in ("count", "mean_ms", "p50_ms", "p90_ms", "p99_ms"):
            assert key in entry, (stage, key)
        assert entry["p50_ms"] <= entry["p90_ms"] <= entry["p99_ms"]
    assert s["stages"]["e2e"]["count"] == 40
    assert len(s["per_worker_stats"]) == 2
    assert h["healthy"] and h["healthy_count"] == 2
    assert sum(b["total_requests"] for b in h["backends"]) == 40


# -- configuration ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"max_batch_size": -3}, "-3"),
        ({"balancer": "fastest"}, "fastest"),
        ({"max_batch_sz": 8}, "max_batch_sz"),
        ({"devices": [5]}, "5"),
        ({"devices": "0,9"}, "9"),
        ({"max_queue": 0}, "max_queue"),
        ({"timeout_s": -1.0}, "timeout_s"),
        ({"backend": "carrier-pigeon"}, "carrier-pigeon"),
    ],
)
def test_config_errors_name_the_bad_value(options: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        Pool(double, cpu_devices=2, **options)
    assert needle in str(info.value)


def test_unknown_balancer_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="round-robin.*queue-depth.*speed"):
        PoolConfig(balancer="least-loaded")


def test_pool_accepts_a_config_object() -> None:
    cfg = PoolConfig(cpu_devices=2, max_batch_size=4, balancer="round-robin")
    with Pool(double, config=cfg) as pool:
        assert pool.config.max_batch_size == 4
        assert len(pool.devices) == 2
        assert list(pool.map(range(6))) == [0, 2, 4, 6, 8, 10]


def test_env_overrides_seed_names() -> None:
    env = {
        "GPU_IDS": "0,1",
        "MAX_BATCH_SIZE": "16",
        "MAX_BATCH_WAIT_TIME": "0.25",
        "GPU_LOAD_BALANCE_STRATEGY": "round_robin",
    }
    out = env_overrides(env)
    assert out == {"devices": "0,1", "max_batch_size": 16, "max_wait_ms": 250.0, "balancer": "round-robin"}
    PoolConfig(**out)  # valid as a whole
    assert env_overrides({"MAX_BATCH_SIZE": "16", "ENABLE_BATCHING": "false"})["max_batch_size"] == 1
    assert "max_batch_size" not in env_overrides({"ENABLE_BATCHING": "true"})
    assert env_overrides({"GPU_LOAD_BALANCE_STRATEGY": "Queue_Depth"})["balancer"] == "queue-depth"
    assert env_overrides({}) == {}


def test_spare_process_modes_from_arguments_and_environment() -> None:
    from gpufleet.config import PoolConfig

    for value in (None, False, True, "imports", "warm"):
        assert PoolConfig(spare_process=value).spare_process == value
    with pytest.raises(ConfigError, match="'imports' or 'warm'"):
        PoolConfig(spare_process="hot")
    assert env_overrides({"GPUFLEET_SPARE_PROCESS": "warm"})["spare_process"] == "warm"
    assert env_overrides({"GPUFLEET_SPARE_PROCESS": "0"})["spare_process"] is False
    assert env_overrides({"GPUFLEET_SPARE_PROCESS": "1"})["spare_process"] is True
    with pytest.raises(ConfigError, match="GPUFLEET_SPARE_PROCESS='hot'.*warm"):
        env_overrides({"GPUFLEET_SPARE_PROCESS": "hot"})


def test_env_overrides_prefer_gpufleet_names_and_reject_garbage() -> None:
    out = env_overrides({"GPUFLEET_MAX_BATCH_SIZE": "8", "MAX_BATCH_SIZE": "64",
                         "GPUFLEET_MAX_WAIT_MS": "3", "MAX_BATCH_WAIT_TIME": "1"})
    assert out == {"max_batch_size": 8, "max_wait_ms": 3.0}
    with pytest.raises(ConfigError, match="MAX_BATCH_SIZE"):
        env_overrides({"MAX_BATCH_SIZE": "lots"})
    with pytest.raises(ConfigError, match="ENABLE_BATCHING"):
        env_overrides({"ENABLE_BATCHING": "maybe"})


def test_stage_percentiles_are_in_milliseconds() -> None:
    def slow(batch: list) -> list:
        time.sleep(0.02)
        return batch

    with Pool(slow, cpu_devices=1, max_batch_size=4, max_wait_ms=0) as pool:
        for _ in range(3):
            pool.submit(1).result()
        stages = pool.stats()["stages"]
    assert 15.0 <= stages["predict"]["p50_ms"] < 2000.0
    assert stages["e2e"]["p50_ms"] >= stages["predict"]["p50_ms"] * 0.9


@pytest.mark.timeout(30)
def test_cancelled_item_frees_its_queue_slot_at_once() -> None:
    gate = threading.Event()

    def blocked(batch: list) -> list:
        gate.wait(10)
        return batch

    pool = Pool(blocked, cpu_devices=1, max_batch_size=1, max_wait_ms=0, max_queue=2)
    try:
        a = pool.submit("a")
        deadline = time.monotonic() + 5
        while not a.running() and time.monotonic() < deadline:
            time.sleep(0.005)
        b = pool.submit("b")
        with pytest.raises(QueueFullError):
            pool.submit("x")
        assert b.cancel()
        assert pool.outstanding == 1
        c = pool.submit("c")  # the cancelled item's slot is free before any worker reached it
        gate.set()
        assert a.result(5) == "a" and c.result(5) == "c"
        assert b.cancelled()
    finally:
        gate.set()
        pool.close()
    assert pool.outstanding == 0


class _Speech:
    """A TTS-like model: each output is 2 s of audio; it declares that through output_seconds()."""

    def setup(self, device) -> None:
        pass

    def predict(self, batch: list) -> list:
        time.sleep(0.01)
        return [{"samples": 32000, "rate": 16000} for _ in batch]

    def output_seconds(self, output: dict) -> float:
        return output["samples"] / output["rate"]


def test_real_time_factor_for_models_that_declare_output_seconds() -> None:
    with Pool(_Speech, cpu_devices=1, max_batch_size=4, max_wait_ms=0) as pool:
        list(pool.map(range(8)))
        st = pool.stats()
    w = st["per_worker_stats"][0]
    assert w["media_s"] == pytest.approx(16.0)
    assert 0 < st["rtf"] < 0.5 and st["rtf"] == pytest.approx(w["busy_s"] / 16.0, rel=0.01)
    with Pool(lambda b: b, cpu_devices=1) as pool:
        pool.submit(1).result()
        assert pool.stats()["rtf"] is None  # no declared duration, no factor


def test_device_hint_prefers_that_device_and_falls_back() -> None:
    with Pool(lambda b: b, cpu_devices=3, max_batch_size=4) as pool:
        assert list(pool.map(range(40), device="cpu:2")) == list(range(40))
        per = {g["device"]: g["total_requests"] for g in pool.stats()["per_gpu_stats"]}
        assert per == {"cpu:0": 0, "cpu:1": 0, "cpu:2": 40}
        pool.set_enabled("cpu:2", False)  # no healthy worker there: any device serves it
        assert pool.submit(7, device="cpu:2").result(10) == 7
        assert pool.submit(8, device="cpu:9").result(10) == 8  # unknown label: no preference
        per = {g["device"]: g["total_requests"] for g in pool.stats()["per_gpu_stats"]}
        assert per["cpu:2"] == 40 and per["cpu:0"] + per["cpu:1"] == 2


def test_gc_freeze_after_setup() -> None:
    import gc

    with Pool(lambda b: b, cpu_devices=1, gc_freeze=True) as pool:
        pool.submit(1).result(10)
        assert gc.get_freeze_count() > 0  # objects alive after set-up are out of the collector's passes


class _CollectBreaks:
    """A pipelined model whose collect() hits a bug in the worker loop's own code path (not predict)."""

    def setup(self, device) -> None:
        self.n = 0

    def predict(self, batch: list) -> list:
        return batch

    def launch(self, batch: list) -> list:
        return batch

    def collect(self, handle: list) -> list:
        self.n += 1
        if self.n == 2:
            raise SystemExit("loop-level failure")  # BaseException: escapes _finish's handler
        return handle


@pytest.mark.timeout(30)
def test_a_worker_loop_crash_fails_in_flight_items_instead_of_hanging() -> None:
    with Pool(_CollectBreaks, cpu_devices=1, max_batch_size=2, max_wait_ms=0) as pool:
        futures = [pool.submit(i) for i in range(8)]
        results = []
        for f in futures:
            try:
                results.append(f.result(timeout=10))
            except WorkerError as exc:
                results.append(exc)
    assert any(isinstance(r, WorkerError) for r in results)
    assert all(isinstance(r, (int, WorkerError)) for r in results)  # every item answered, none hangs


class _SlowCollect:
    """A pipelined model whose results take 30 ms to come back after a quick launch."""

    def predict(self, batch: list) -> list:
        return batch

    def launch(self, batch: list) -> list:
        return batch

    def collect(self, handle: list) -> list:
        time.sleep(0.03)
        return handle


def test_the_thread_loop_reports_launch_collect_and_its_idle_time() -> None:
    with Pool(_SlowCollect, cpu_devices=1, max_batch_size=4, max_wait_ms=0) as pool:
        assert list(pool.map(range(8))) == list(range(8))
        time.sleep(0.2)  # nothing to serve: the loop waits for a batch
        stats = pool.stats()
    stages = stats["stages"]
    assert stages["collect"]["p50_ms"] >= 25 and stages["launch"]["p50_ms"] < stages["collect"]["p50_ms"]
    assert stages["collect"]["count"] == stages["predict"]["count"] == stats["total_batches"]
    assert stats["per_worker_stats"][0]["idle_s"] >= 0.15


def wait_until(cond, timeout: float = 5.0) -> bool:
    return _wait_until(cond, timeout)


class _PredictOnly:
    """The smallest model the contract allows: ``predict`` and nothing else (no ``setup``)."""

    def predict(self, batch: list) -> list:
        return [x + 1 for x in batch]


def test_a_model_with_only_predict_is_served() -> None:
    with Pool(_PredictOnly(), cpu_devices=1) as pool:
        assert list(pool.map(range(5))) == [1, 2, 3, 4, 5]
