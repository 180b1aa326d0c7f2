"""The Ray backend on one node with four fake GPUs: the same Pool, batching, errors, stats and recovery."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from gpufleet import Pool
from gpufleet.engine.process.shm import leaked_segments
from gpufleet.errors import ConfigError, InputError, WorkerDied, WorkerError
from tests.engine.process_models import Doubler, Overlapping
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


def test_items_reach_every_actor_in_order_with_stats_per_node(local_ray) -> None:
    with Pool(Doubler, backend="ray", max_batch_size=8, max_wait_ms=2) as pool:
        assert [d.label for d in pool.devices] == ["ray:0", "ray:1", "ray:2", "ray:3"]
        assert list(pool.map(range(600))) == [2 * i for i in range(600)]
        arrays = [np.full((3, 32, 32), i, np.float32) for i in range(40)]  # sent as one stacked buffer
        out = list(pool.map(arrays))
        assert all(o.shape == (3, 32, 32) and o.flat[0] == 2 * i for i, o in enumerate(out))
        stats = pool.stats()
        assert stats["backend"] == "ray" and stats["total_requests"] == 640
        assert all(g["total_requests"] > 0 for g in stats["per_gpu_stats"])  # every actor served
        node = local_ray.get_runtime_context().get_node_id()
        assert {g["node"] for g in stats["per_gpu_stats"]} == {node}
        health = pool.health()
        assert health["ready"] and all(b["healthy"] and b["node"] == node for b in health["backends"])


def test_an_actor_launches_the_next_batch_before_it_collects_the_last(local_ray) -> None:
    with Pool(Overlapping, backend="ray", max_batch_size=4, max_wait_ms=1) as pool:
        out = list(pool.map(range(160)))
    assert [x for x, _ in out] == [2 * i for i in range(160)]
    assert max(o for _, o in out) >= 1  # two batches were in the actor's model at once


def test_errors_are_the_engines_errors(local_ray) -> None:
    with Pool(Doubler, backend="ray", cpu_devices=1, max_batch_size=4) as pool:
        with pytest.raises(InputError, match="bad item"):
            pool.submit("bad").result(timeout=60)
        assert pool.submit(21).result(timeout=60) == 42  # the actor still serves


def test_a_killed_actor_loses_no_item_and_comes_back(local_ray) -> None:
    with Pool(Doubler, backend="ray", max_batch_size=8, max_wait_ms=2, restart_backoff_s=0.1) as pool:
        victim = pool.workers[1]
        old_pid = victim.placement()["pid"]
        results: list = []
        feeder = threading.Thread(target=lambda: results.extend(pool.map((("sleep", 0.002, i) for i in range(3000)),
                                                                         return_exceptions=True)))
        feeder.start()
        assert wait_until(lambda: victim.stats.total_batches > 5, 60)
        local_ray.kill(victim._actor, no_restart=True)
        feeder.join(120)
        assert results == list(range(3000))  # none lost, none twice, in order
        assert wait_until(lambda: victim.healthy and victim.placement()["pid"] != old_pid, 60)
        assert pool.stats()["restarts"] >= 1
        assert pool.submit(5).result(timeout=60) == 10


def test_actors_on_this_host_read_batches_from_shared_memory(local_ray) -> None:
    from tests.engine.process_models import Echo

    with Pool(Echo, backend="ray", cpu_devices=1, max_batch_size=8, max_wait_ms=5) as pool:
        w = pool.workers[0]
        assert w.placement()["batches_via"] == "shared memory"
        arrays = [np.full((3, 32, 32), i, np.float16) for i in range(16)]  # stacked: one block in a segment
        out = list(pool.map(arrays))
        assert all(o.dtype == np.float16 and o.shape == (3, 32, 32) and o.flat[0] == i for i, o in enumerate(out))
        items = [b"x" * 100, bytes(range(256)) * 4, b"j" * 100_000, {"image": b"\xff\xd8" * 3000}, (1, "a"), 7]
        assert list(pool.map(items)) == items  # small bytes inline, larger ones (JPEGs) in the segment
        assert leaked_segments(w._prefix)  # this worker's segments, kept for the next batches
    assert leaked_segments(w._prefix) == []


def test_without_shared_memory_batches_go_through_the_object_store(local_ray, monkeypatch) -> None:
    from gpufleet.ray import backend

    monkeypatch.setattr(backend, "SHARED_MEMORY", False)  # as for an actor on another node
    with Pool(Doubler, backend="ray", cpu_devices=1, max_batch_size=8, max_wait_ms=5) as pool:
        w = pool.workers[0]
        assert w.placement()["batches_via"] == "object store"
        arrays = [np.full((3, 32, 32), i, np.float32) for i in range(16)]
        assert [o.flat[0] for o in pool.map(arrays)] == [2 * i for i in range(16)]
        assert pool.submit(b"ab").result(timeout=60) == b"abab"
        assert leaked_segments(w._prefix) == []  # none made


def test_a_killed_actor_reading_shared_memory_loses_no_item_and_frees_its_segments(local_ray) -> None:
    from tests.ray.ray_models import SlowRows

    with Pool(SlowRows, backend="ray", cpu_devices=1, max_batch_size=8, max_wait_ms=2,
              restart_backoff_s=0.1) as pool:
        w = pool.workers[0]
        rows = (np.full((64, 64), i, np.float32) for i in range(1500))  # 16 KB each: every batch in a segment
        results: list = []
        feeder = threading.Thread(target=lambda: results.extend(pool.map(rows, return_exceptions=True)))
        feeder.start()
        assert wait_until(lambda: w.stats.total_batches > 5 and w._seg_of, 60)
        local_ray.kill(w._actor, no_restart=True)
        feeder.join(120)
        assert results == [2.0 * i for i in range(1500)]  # none lost, none twice, in order
        assert pool.stats()["restarts"] >= 1 and w.placement()["batches_via"] == "shared memory"
        assert wait_until(lambda: not w._seg_of, 10)  # no segment held for a call that will never answer
    assert leaked_segments(w._prefix) == []


def test_an_item_that_kills_its_actor_gives_up_after_its_retries(local_ray) -> None:
    with Pool(Doubler, backend="ray", max_batch_size=4, max_retries=1, restart_backoff_s=0.1) as pool:
        good = [pool.submit(i) for i in range(20)]
        with pytest.raises(WorkerDied, match="actor died.*gave up after 2 attempt"):
            pool.submit("poison").result(timeout=120)
        assert [f.result(timeout=60) for f in good] == [2 * i for i in range(20)]


def test_max_batch_size_zero_is_refused(local_ray) -> None:
    with pytest.raises(ConfigError, match="not supported with backend='ray'"):
        Pool(Doubler, backend="ray", max_batch_size=0)


def test_a_setup_failure_names_the_worker(local_ray) -> None:
    from tests.ray.ray_models import FailsInSetup

    with pytest.raises(WorkerError, match="failed in setup.*weights"):
        Pool(FailsInSetup, backend="ray", cpu_devices=1)


def test_without_ray_one_line_names_the_extra() -> None:
    code = ("import sys; sys.modules['ray'] = None\n"
            "from gpufleet import Pool\n"
            "try:\n    Pool(lambda b: b, backend='ray')\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == 'ConfigError backend="ray" needs Ray: pip install "gpufleet[ray]"'


def test_engine_imports_no_ray() -> None:
    code = "import sys; import gpufleet, gpufleet.engine; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "False"
