"""The Ray backend across nodes: a real multi-node Ray on this machine (``ray.cluster_utils.Cluster``), two
nodes with two fake GPUs each."""

from __future__ import annotations

import threading

import pytest

from gpufleet import Pool
from tests.engine.process_models import Doubler
from tests.waiting import wait_until

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    a = c.add_node(num_cpus=1, num_gpus=2)
    b = c.add_node(num_cpus=1, num_gpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, a, b
    ray.shutdown()
    c.shutdown()


def test_actors_on_every_gpu_of_every_node(cluster) -> None:
    _, a, b = cluster
    with Pool(Doubler, backend="ray", max_batch_size=8, max_wait_ms=2) as pool:
        assert len(pool.workers) == 4
        assert list(pool.map(range(500))) == [2 * i for i in range(500)]
        per_gpu = pool.stats()["per_gpu_stats"]
        assert sorted(g["node"] for g in per_gpu) == sorted([a.node_id] * 2 + [b.node_id] * 2)
        assert all(g["total_requests"] > 0 for g in per_gpu)
        # the fake nodes share this host's /dev/shm: the actors read batches from the pool's segments
        assert {w.placement()["batches_via"] for w in pool.workers} == {"shared memory"}


def test_a_lost_node_moves_its_actors_and_loses_no_item(cluster) -> None:
    c, a, b = cluster
    with Pool(Doubler, backend="ray", ray_nodes=(a.node_id,), max_batch_size=8, max_wait_ms=2,
              restart_backoff_s=0.1) as pool:
        assert {w.placement()["node"] for w in pool.workers} == {a.node_id}
        results: list = []
        feeder = threading.Thread(target=lambda: results.extend(
            pool.map((("sleep", 0.002, i) for i in range(2000)), return_exceptions=True)))
        feeder.start()
        assert wait_until(lambda: pool.stats()["total_requests"] > 200, 60)
        c.remove_node(a)
        feeder.join(240)
        assert results == list(range(2000))  # none lost, none twice, in order
        assert wait_until(lambda: all(w.healthy for w in pool.workers), 120)
        assert {w.placement()["node"] for w in pool.workers} == {b.node_id}


def test_rescale_adds_workers_for_a_node_that_joined(cluster) -> None:
    c, _, _ = cluster
    with Pool(Doubler, backend="ray", max_batch_size=8, max_wait_ms=2) as pool:
        before = len(pool.workers)
        assert pool.rescale() == []  # nothing new
        node = c.add_node(num_cpus=1, num_gpus=1)
        c.wait_for_nodes()
        assert pool.rescale() == [before]
        assert pool.workers[-1].healthy and pool.workers[-1].placement()["node"] == node.node_id
        assert list(pool.map(range(300))) == [2 * i for i in range(300)]
        assert pool.stats()["per_gpu_stats"][-1]["total_requests"] > 0
