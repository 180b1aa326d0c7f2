"""Batcher: full batches from a backlog, timed flush of a lone item, non-blocking take, close, buckets."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from gpufleet.engine.batcher import Batcher, bucket_for
from gpufleet.engine.request import Request


def req(item: object) -> Request:
    return Request(item, Future(), time.monotonic(), None)


def items(batch: list[Request] | None) -> list:
    assert batch is not None
    return [r.item for r in batch]


def test_backlog_gives_one_full_batch_at_once() -> None:
    b = Batcher(max_wait_s=10.0)
    b.put_many([req(i) for i in range(10)])
    t0 = time.monotonic()
    assert items(b.take(4)) == [0, 1, 2, 3]
    assert items(b.take(4)) == [4, 5, 6, 7]
    assert time.monotonic() - t0 < 2.0  # far below max_wait: a backlog never waits
    assert len(b) == 2


@pytest.mark.timeout(30)
def test_fills_to_max_n_while_items_arrive() -> None:
    b = Batcher(max_wait_s=10.0)

    def produce() -> None:
        for i in range(8):
            b.put(req(i))
            time.sleep(0.005)

    t = threading.Thread(target=produce)
    t0 = time.monotonic()
    t.start()
    batch = b.take(8)
    elapsed = time.monotonic() - t0
    t.join()
    assert items(batch) == list(range(8))
    assert elapsed < 5.0  # returned when the batch was full, not after max_wait


@pytest.mark.timeout(30)
def test_lone_item_flushes_after_max_wait() -> None:
    b = Batcher(max_wait_s=0.2)
    t0 = time.monotonic()
    b.put(req("x"))
    batch = b.take(8)
    elapsed = time.monotonic() - t0
    assert items(batch) == ["x"]
    assert elapsed >= 0.19  # not (much) before max_wait
    assert elapsed < 3.0  # and not forever


@pytest.mark.timeout(30)
def test_idle_consumer_waits_max_wait_after_the_first_item() -> None:
    b = Batcher(max_wait_s=0.15)
    put_at: list[float] = []

    def produce() -> None:
        time.sleep(0.1)
        put_at.append(time.monotonic())
        b.put(req("late"))

    t = threading.Thread(target=produce)
    t.start()
    batch = b.take(8)
    done = time.monotonic()
    t.join()
    assert items(batch) == ["late"]
    assert done - put_at[0] >= 0.14
    assert done - put_at[0] < 3.0


def test_zero_wait_returns_what_is_queued() -> None:
    b = Batcher(max_wait_s=0.0)
    b.put_many([req(1), req(2)])
    assert items(b.take(8)) == [1, 2]


def test_non_blocking_take() -> None:
    b = Batcher(max_wait_s=10.0)
    assert b.take(4, block=False) == []
    b.put_many([req(i) for i in range(6)])
    assert items(b.take(4, block=False)) == [0, 1, 2, 3]
    assert items(b.take(4, block=False)) == [4, 5]
    assert b.take(4, block=False) == []


def test_idle_timeout_returns_empty_list() -> None:
    b = Batcher(max_wait_s=10.0)
    t0 = time.monotonic()
    assert b.take(4, idle_timeout=0.05) == []
    assert time.monotonic() - t0 < 3.0


@pytest.mark.timeout(30)
def test_close_serves_queue_then_returns_none() -> None:
    b = Batcher(max_wait_s=10.0)
    b.put_many([req(1), req(2), req(3)])
    b.close()
    assert b.closed
    t0 = time.monotonic()
    assert items(b.take(2)) == [1, 2]
    assert items(b.take(2)) == [3]  # closed: no waiting for a full batch
    assert time.monotonic() - t0 < 2.0
    assert b.take(2) is None
    assert b.take(2) is None


@pytest.mark.timeout(30)
def test_close_wakes_a_blocked_consumer() -> None:
    b = Batcher(max_wait_s=10.0)
    got: list = []
    t = threading.Thread(target=lambda: got.append(b.take(4)))
    t.start()
    time.sleep(0.05)
    b.close()
    t.join(timeout=5)
    assert not t.is_alive()
    assert got == [None]


@pytest.mark.timeout(30)
def test_close_cuts_the_wait_for_a_partial_batch() -> None:
    b = Batcher(max_wait_s=10.0)
    b.put(req("a"))
    got: list = []
    t = threading.Thread(target=lambda: got.append(b.take(4)))
    t.start()
    time.sleep(0.05)
    b.close()
    t.join(timeout=5)
    assert not t.is_alive()
    assert items(got[0]) == ["a"]


def test_drain_empties_the_queue() -> None:
    b = Batcher(max_wait_s=1.0)
    b.put_many([req(i) for i in range(3)])
    assert [r.item for r in b.drain()] == [0, 1, 2]
    assert len(b) == 0


def test_put_stamps_enqueue_time() -> None:
    b = Batcher(max_wait_s=1.0)
    r = req("x")
    r.t_enqueue = 0.0
    b.put(r)
    assert r.t_enqueue > 0.0


@pytest.mark.parametrize(
    ("n", "buckets", "want"),
    [
        (3, None, 3),
        (3, (), 3),
        (1, (1, 2, 4, 8), 1),
        (3, (1, 2, 4, 8), 4),
        (4, (1, 2, 4, 8), 4),
        (5, (1, 2, 4, 8), 8),
        (9, (1, 2, 4, 8), 9),
        (7, (8, 16), 8),
    ],
)
def test_bucket_for(n: int, buckets: tuple[int, ...] | None, want: int) -> None:
    assert bucket_for(n, buckets) == want


@pytest.mark.timeout(30)
def test_wait_full_returns_when_full_ready_closed_or_timed_out() -> None:
    b = Batcher(max_wait_s=10.0)
    b.put_many([req(i) for i in range(3)])
    t0 = time.monotonic()
    assert b.wait_full(4, lambda: False, 0.05) is False  # neither full nor ready: times out
    assert time.monotonic() - t0 >= 0.04
    b.put(req(3))
    assert b.wait_full(4, lambda: False, 5.0) is True  # full
    flag = threading.Event()

    def later() -> None:
        time.sleep(0.05)
        flag.set()
        b.wake()

    t = threading.Thread(target=later)
    t.start()
    t0 = time.monotonic()
    assert b.wait_full(10, flag.is_set, 5.0) is True  # ready() checked again when woken
    assert time.monotonic() - t0 < 2.0
    t.join()
    b.close()
    assert b.wait_full(10, lambda: False, 5.0) is True
