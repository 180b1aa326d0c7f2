"""The Ray backend on one node with four fake GPUs: the same Pool, batching, errors, stats and recovery."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from gpufleet import Pool
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
