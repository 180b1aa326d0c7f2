"""Process workers under real signals: kill -9 under a stream of requests, a poison input that kills the
process, a hung and a stopped child. Nothing submitted may be lost; shared memory must not leak."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from gpufleet import Pool
from gpufleet.engine.process.shm import leaked_segments
from gpufleet.errors import WorkerDied, WorkerError
from tests.engine.process_models import Doubler
from tests.waiting import wait_until as _wait_until

pytestmark = pytest.mark.timeout(180)

OURS = f"gpufleet_{os.getpid():x}"




def test_kill9_under_load_loses_nothing_and_restarts() -> None:
    with Pool(Doubler, cpu_devices=2, backend="process", max_batch_size=4, max_wait_ms=1, max_retries=3,
              restart_backoff_s=0.05) as pool:
        victim = pool.workers[0]
        old_pid = victim.pid
        futures: list = []
        stop = threading.Event()

        def produce() -> None:
            i = 0
            while not stop.is_set() and i < 3000:
                futures.append((i, pool.submit(("sleep", 0.004, i) if i % 3 == 0 else i)))
                i += 1
                time.sleep(0.001)

        producer = threading.Thread(target=produce)
        producer.start()
        assert wait_until(lambda: victim.stats.total_batches > 20 and victim.link.inflight, 30)
        os.kill(old_pid, signal.SIGKILL)
        assert wait_until(lambda: not victim.healthy, 5)  # noticed within a second or so
        assert wait_until(lambda: victim.healthy and victim.pid != old_pid, 60)
        time.sleep(0.3)  # a little load on the new process too
        stop.set()
        producer.join()
        for i, f in futures:
            assert f.result(timeout=60) == (i if i % 3 == 0 else 2 * i)
        st = pool.stats()
        assert st["restarts"] >= 1 and st["per_worker_stats"][0]["restarts"] >= 1
        assert st["errors"] == 0 and st["queue_depth"] == 0
        backend = pool.health()["backends"][0]
        assert backend["restarts"] >= 1 and backend["worker_failures"] >= 1
        assert "SIGKILL" in backend["last_failure"]
        before = victim.stats.total_requests
        assert list(pool.map(range(200))) == [2 * x for x in range(200)]
        assert victim.stats.total_requests > before  # the restarted worker serves again
        assert leaked_segments(f"{victim._prefix}g1") == []  # the dead child's segments are gone
    assert leaked_segments(OURS) == []


def test_a_batch_killed_from_outside_retries_together_then_alone() -> None:
    """kill -9 from outside is seldom the items' doing: the running batch's items retry together (each counts
    an attempt); killed again, they are suspects and go alone, as after a crash."""
    with Pool(Doubler, cpu_devices=1, backend="process", max_batch_size=8, max_wait_ms=50, max_retries=3,
              restart_backoff_s=0.05) as pool:
        w = pool.workers[0]
        futures = [pool.submit(("size", 0.8)) for _ in range(4)]
        for _ in range(2):
            pid = w.pid
            assert wait_until(lambda p=pid: w.healthy and w.link.inflight and w.pid == p, 60)
            time.sleep(0.3)  # the child is running the batch
            os.kill(pid, signal.SIGKILL)
            assert wait_until(lambda p=pid: w.pid != p, 60)
        assert [f.result(timeout=60) for f in futures] == [1, 1, 1, 1]  # after the second kill: alone
        futures = [pool.submit(("size", 0.8)) for _ in range(4)]
        assert wait_until(lambda: w.healthy and w.link.inflight, 60)
        time.sleep(0.3)
        os.kill(w.pid, signal.SIGKILL)
        assert [f.result(timeout=60) for f in futures] == [4, 4, 4, 4]  # after one: together
        assert pool.stats()["errors"] == 0


def test_poison_item_fails_after_retries_others_succeed_breaker_opens_and_closes() -> None:
    with Pool(Doubler, cpu_devices=2, backend="process", max_retries=2, max_wait_ms=5, breaker_threshold=1,
              breaker_cooldown_s=0.3, restart_backoff_s=0.05) as pool:
        good = [pool.submit(i) for i in range(40)]
        poison = pool.submit("poison")
        good += [pool.submit(i) for i in range(40, 80)]
        with pytest.raises(WorkerDied, match="exited with code 1.*gave up after 3 attempt.*max_retries=2"):
            poison.result(timeout=90)
        assert [f.result(timeout=60) for f in good] == [2 * i for i in range(80)]
        backends = pool.health()["backends"]
        assert sum(b["breaker_trips"] for b in backends) >= 1
        assert sum(b["worker_failures"] for b in backends) == 3  # one crash per attempt, none for neighbours

        def all_closed() -> bool:
            for i in range(4):  # traffic lets a half-open worker prove itself
                pool.submit(i)
            return all(b["healthy"] and b["state"] == "closed" for b in pool.health()["backends"])

        assert wait_until(all_closed, 60)
        assert pool.stats()["restarts"] >= 3
    assert leaked_segments(OURS) == []


def test_hung_worker_is_killed_and_replaced() -> None:
    with Pool(Doubler, cpu_devices=2, backend="process", batch_timeout_s=1.0, max_retries=0,
              restart_backoff_s=0.05, max_wait_ms=1) as pool:
        hung = pool.submit("hang")
        with pytest.raises(WorkerError, match="batch_timeout_s=1.0.*gave up after 1 attempt"):
            hung.result(timeout=60)
        assert list(pool.map(range(50))) == [2 * x for x in range(50)]
        assert wait_until(lambda: all(w.healthy for w in pool.workers), 60)
        assert pool.stats()["restarts"] >= 1


def test_stopped_child_misses_heartbeats_and_is_replaced() -> None:
    with Pool(Doubler, cpu_devices=1, workers_per_device=2, backend="process", heartbeat_timeout_s=1.0,
              restart_backoff_s=0.05) as pool:
        victim = pool.workers[1]
        old = victim.pid
        os.kill(old, signal.SIGSTOP)
        assert wait_until(lambda: victim.pid != old and victim.healthy, 60)
        assert "heartbeat" in pool.health()["backends"][1]["last_failure"]
        assert list(pool.map(range(40))) == [2 * x for x in range(40)]


def wait_until(cond, timeout: float = 60.0) -> bool:
    return _wait_until(cond, timeout)
