"""Balancers on plain objects with ``outstanding``/``item_time`` (the Routable protocol)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from gpufleet.engine.balancer import QueueDepth, RoundRobin, Speed, make_balancer
from gpufleet.errors import ConfigError


@dataclass(eq=False)
class W:
    name: str
    outstanding: int = 0
    item_time: float = 0.0


def test_round_robin_cycles() -> None:
    ws = [W("a"), W("b"), W("c")]
    ws[0].outstanding = 100  # ignored
    rr = RoundRobin()
    assert [rr.pick(ws).name for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]


def test_queue_depth_picks_fewest_outstanding() -> None:
    ws = [W("a", 3), W("b", 1), W("c", 2)]
    qd = QueueDepth()
    assert {qd.pick(ws).name for _ in range(6)} == {"b"}


def test_queue_depth_rotates_ties() -> None:
    ws = [W("a"), W("b"), W("c"), W("d", 5)]
    qd = QueueDepth()
    picks = Counter(qd.pick(ws).name for _ in range(30))
    assert set(picks) == {"a", "b", "c"}
    assert min(picks.values()) >= 5  # every tied worker gets a share


def test_queue_depth_spreads_a_burst_evenly() -> None:
    ws = [W("a"), W("b"), W("c")]
    qd = QueueDepth()
    for _ in range(30):
        qd.pick(ws).outstanding += 1
    assert [w.outstanding for w in ws] == [10, 10, 10]


def test_speed_picks_least_expected_finish_time() -> None:
    fast, slow = W("fast", item_time=0.01), W("slow", item_time=0.03)
    sp = Speed()
    assert sp.pick([fast, slow]) is fast  # 1 × 0.01 < 1 × 0.03
    fast.outstanding = 3  # 4 × 0.01 = 0.04 > 1 × 0.03
    assert sp.pick([fast, slow]) is slow
    fast.outstanding, slow.outstanding = 5, 1  # 0.06 vs 0.06: a tie rotates
    assert {sp.pick([fast, slow]).name for _ in range(4)} == {"fast", "slow"}


def test_speed_shares_work_in_proportion_to_speed() -> None:
    fast, slow = W("fast", item_time=0.001), W("slow", item_time=0.003)
    sp = Speed()
    for _ in range(400):
        sp.pick([fast, slow]).outstanding += 1
    assert 2.5 <= fast.outstanding / slow.outstanding <= 3.5


def test_speed_probes_unmeasured_workers() -> None:
    measured, new = W("measured", outstanding=1, item_time=0.01), W("new")
    sp = Speed()
    # The new worker is assumed as fast as the fastest measured one: (0 + 1) × 0.01 < (1 + 1) × 0.01.
    assert sp.pick([measured, new]) is new
    # With nothing measured the speed balancer behaves like queue-depth.
    a, b = W("a", outstanding=2), W("b", outstanding=1)
    assert sp.pick([a, b]) is b


def test_speed_does_not_starve_an_unmeasured_worker_among_slow_ones() -> None:
    ws = [W("a", item_time=0.5), W("b", item_time=0.5), W("new")]
    sp = Speed()
    for _ in range(9):
        sp.pick(ws).outstanding += 1
    assert ws[2].outstanding >= 2


@pytest.mark.parametrize(("name", "cls"), [("round-robin", RoundRobin), ("queue-depth", QueueDepth), ("speed", Speed)])
def test_make_balancer_by_name(name: str, cls: type) -> None:
    b = make_balancer(name)
    assert isinstance(b, cls)
    assert b.name == name


def test_make_balancer_unknown_name_lists_choices() -> None:
    with pytest.raises(ConfigError) as info:
        make_balancer("fastest")
    msg = str(info.value)
    assert "'fastest'" in msg
    for choice in ("round-robin", "queue-depth", "speed"):
        assert choice in msg
