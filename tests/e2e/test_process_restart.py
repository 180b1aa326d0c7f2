"""A process worker's restart as clients see it: items wait for the replacement instead of failing, their
deadlines still apply, the pool stays ready and says "restarting", the restart's time is measured per phase,
a spare child (imports-only or warm) takes over, a start-up killed from outside restarts at once, a call that
never returns is replaced, and an out-of-memory storm kills nothing."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from gpufleet import Pool
from gpufleet.errors import DeadlineExceeded, WorkerError
from tests.engine.process_models import Doubler, SlowSetup, SpareReady
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


def test_items_wait_for_the_restart_and_deadlines_still_apply() -> None:
    with Pool(Doubler, cpu_devices=1, backend="process", max_batch_size=4, max_wait_ms=1) as pool:
        w = pool.workers[0]
        assert pool.submit(1).result(timeout=60) == 2
        os.kill(w.pid, signal.SIGKILL)
        assert wait_until(lambda: not w.healthy, 10)
        assert pool.ready  # a restart is under way: the pool keeps taking work
        h = pool.health()
        assert h["status"] == "restarting" and h["ready"] and h["restarting_count"] == 1
        assert h["backends"][0]["status"] == "restarting" and h["backends"][0]["back_in_s"] > 0
        held = [pool.submit(i) for i in range(50)]  # no healthy worker: held, not refused
        answered_while_down: list[bool] = []
        late = pool.submit(7, timeout_s=0.05)
        late.add_done_callback(lambda f: answered_while_down.append(not w.healthy))
        assert [f.result(timeout=60) for f in held] == [2 * i for i in range(50)]
        assert isinstance(late.exception(timeout=60), DeadlineExceeded)
        assert answered_while_down == [True]  # at its deadline, not when the worker came back
        assert wait_until(lambda: len(w.restart_history) == 1, 10)  # recorded just after it serves again
        st = pool.stats()["per_worker_stats"][0]
        assert st["restarts"] == 1 and st["restart_s_total"] > 0
        last = st["last_restart"]
        assert {"total", "reap", "backoff", "spawn_imports", "cuda_context", "model_load", "setup",
                "ready"} <= set(last)
        assert last["backoff"] == 0  # the first failure in a row restarts at once
        assert st["restart_history"] == [last] and st["setup_breakdown"]["total"] > 0
        assert pool.health()["status"] == "ok"


def test_a_spare_child_takes_over_and_a_new_spare_follows() -> None:
    with Pool(Doubler, cpu_devices=1, backend="process", spare_process=True) as pool:
        w = pool.workers[0]
        for k in range(2):
            assert wait_until(lambda: w._spare is not None, 30)
            spare_pid = w._spare.pid
            os.kill(w.pid, signal.SIGKILL)
            assert pool.submit(3).result(timeout=60) == 6
            assert w.pid == spare_pid
            assert wait_until(lambda n=k + 1: len(w.restart_history) == n, 10)  # recorded just after it serves
            assert "spare_start" in w.stats.last_restart and "spawn_imports" not in w.stats.last_restart
        assert pool.stats()["restarts"] == 2


def test_a_spare_runs_the_models_prepare_spare_before_it_takes_over() -> None:
    with Pool(SpareReady(), cpu_devices=1, backend="process", spare_process=True) as pool:
        w = pool.workers[0]
        assert pool.submit(0).result(timeout=60) is False  # the first child was no spare
        assert wait_until(lambda: w.spare_state == "imported", 30)
        os.kill(w.pid, signal.SIGKILL)
        assert pool.submit(0).result(timeout=60) is True


def test_a_warm_spare_is_set_up_before_the_kill_and_takes_over_at_once() -> None:
    with Pool(SlowSetup, cpu_devices=1, backend="process", spare_process="warm", max_wait_ms=1) as pool:
        w = pool.workers[0]
        assert w.spare_state in ("importing", "imported", "setting_up", "warm")  # warmed once the first is ready
        assert wait_until(lambda: w.spare_state == "warm", 60)
        assert pool.health()["backends"][0]["spare"] == "warm"
        spare_pid = w._spare.pid
        killed_at = time.time()
        os.kill(w.pid, signal.SIGKILL)
        began, ended = pool.submit("setup_at").result(timeout=60)
        assert w.pid == spare_pid and ended < killed_at  # its model was set up before the kill
        assert wait_until(lambda: len(w.restart_history) == 1, 10)
        last = w.restart_history[-1]
        assert "spare_start" in last and "spawn_imports" not in last
        assert "setup" not in last and last["warm_ahead"] >= SlowSetup.setup_s  # nothing of it left to do
        assert last["total"] < SlowSetup.setup_s
        st = pool.stats()["per_worker_stats"][0]
        assert st["spare_mode"] == "warm" and st["spare"] is not None and st["spare_pid"] != spare_pid  # the next
        # taken while still setting up: it finishes, then serves; the phases split its setup at the kill
        assert wait_until(lambda: w.spare_state == "setting_up", 60)
        os.kill(w.pid, signal.SIGKILL)
        assert pool.submit(4).result(timeout=60) == 8
        assert wait_until(lambda: len(w.restart_history) == 2, 10)
        last = w.restart_history[-1]
        assert last["warm_ahead"] > 0 and last["setup"] > 0 and "spare_start" in last


def test_a_start_up_killed_from_outside_restarts_at_once_and_the_next_spare_takes_over(caplog) -> None:
    caplog.set_level(logging.ERROR, logger="gpufleet.engine.process.worker")
    with Pool(SlowSetup, cpu_devices=1, backend="process", spare_process=True, max_wait_ms=1) as pool:
        w = pool.workers[0]
        assert wait_until(lambda: w._spare is not None, 30)
        first = w.pid
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: w.pid != first, 10)
        assert not w.healthy  # the spare that took over is in its 1.5 s setup
        os.kill(w.pid, signal.SIGKILL)
        assert pool.submit(3).result(timeout=60) == 6
        assert wait_until(lambda: len(w.restart_history) == 1, 10)
        last = w.restart_history[-1]
        assert "spare_start" in last and "spawn_imports" not in last  # the spare spawned at the takeover
        assert last["backoff"] == 0 and last["failed_starts"] > 0
        st = pool.stats()["per_worker_stats"][0]
        assert st["setup_kills"] == 1 and st["worker_failures"] == 1  # the kill in setup is no model failure
        said = [r.getMessage() for r in caplog.records if "during setup" in r.getMessage()]
        assert said and "SIGKILL" in said[0] and "__main__" not in said[0]


def test_a_call_that_never_returns_is_replaced_once_its_items_expired() -> None:
    with Pool(Doubler, cpu_devices=1, backend="process", heartbeat_timeout_s=1.0, max_wait_ms=1) as pool:
        hung = pool.submit("hang", timeout_s=0.3)
        assert isinstance(hung.exception(timeout=60), DeadlineExceeded)
        after = pool.submit(5, timeout_s=60)  # queued behind the hung call: served by the replacement
        assert after.result(timeout=60) == 10
        assert pool.stats()["restarts"] == 1
        assert "past every item's deadline" in pool.health()["backends"][0]["last_failure"]


def test_an_out_of_memory_storm_fails_those_items_and_kills_nothing() -> None:
    with Pool(Doubler, cpu_devices=1, backend="process", max_batch_size=8, max_wait_ms=1) as pool:
        pid = pool.workers[0].pid
        futures = [pool.submit("oom" if i % 2 else i) for i in range(200)]
        for i, f in enumerate(futures):
            if i % 2:
                assert isinstance(f.exception(timeout=60), WorkerError)
            else:
                assert f.result(timeout=60) == 2 * i
        assert pool.workers[0].pid == pid and pool.workers[0].healthy
        assert pool.stats()["restarts"] == 0
