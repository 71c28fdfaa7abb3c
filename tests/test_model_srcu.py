"""Tree SRCU model: the timer rule, grace periods, the transferred stall, barriers and cleanup."""

from __future__ import annotations

import pytest

from kernel_model import srcutree as s
from kernel_model.sim import ModelError, Sim, calc_index_expiry

HZ = 250
TICK = 1_000_000_000 // HZ


@pytest.mark.parametrize("clk,expires,fires", [
    (100, 101, 102),   # 1 jiffy: the second tick after arming
    (100, 110, 111),
    (100, 162, 163),   # last delta on level 0
    (100, 163, 168),   # level 1: rounded up to the next multiple of 8
    (100, 99, 101),    # already expired: next tick
])
def test_timer_wheel_rounding(clk, expires, fires):
    assert calc_index_expiry(expires, clk) == fires


def test_rcu_seq_snap_needs_the_next_full_grace_period_when_one_is_in_flight():
    assert s.rcu_seq_snap(0) == 4
    assert s.rcu_seq_snap(1) == 8
    assert s.rcu_seq_snap(2) == 8
    assert s.rcu_seq_snap(4) == 8


def test_expedited_sync_on_idle_srcu_is_fast_and_leaves_it_idle():
    sim = Sim(HZ, 0.4)
    ssp = s.SrcuStruct(sim)
    s.synchronize_srcu_expedited(ssp)
    assert sim.now < 100_000
    assert not ssp.gp_in_flight and ssp.srcu_gp_seq == ssp.srcu_gp_seq_needed == 4


@pytest.mark.parametrize("phase", [0.0, 0.25, 0.5, 0.75, 0.99])
def test_call_srcu_transfers_a_normal_grace_period_to_the_next_expedited_sync(phase):
    sim = Sim(HZ, phase)
    ssp = s.SrcuStruct(sim)
    s.call_srcu(ssp, lambda: None)
    delta = 50_000
    sim.run_until(delta)
    s.synchronize_srcu_expedited(ssp)
    stall = sim.now - delta
    # The timer rule: stall ~ (2 - phase)/HZ - delta + c, c a few tens of microseconds.
    timer_rule = int((2 - phase) * TICK) - delta
    assert timer_rule < stall < timer_rule + 200_000
    assert len(ssp.grace_periods) == 2 and ssp.grace_periods[0].expedited_at_end


def test_call_srcu_expedited_does_not_stall_a_later_sync():
    sim = Sim(HZ, 0.3)
    ssp = s.SrcuStruct(sim)
    s.call_srcu_expedited(ssp, lambda: None)
    sim.run_until(50_000)
    s.synchronize_srcu_expedited(ssp)
    assert sim.now - 50_000 < 100_000


def test_callback_runs_after_its_grace_period_only():
    sim = Sim(HZ, 0.0)
    ssp = s.SrcuStruct(sim)
    ran: list[int] = []
    s.call_srcu(ssp, lambda: ran.append(sim.now))
    sim.run_until(TICK)
    assert ran == []  # the normal grace period is still waiting for its timer
    sim.run_until(6 * TICK)
    # The grace period ends when its timer fires on tick 2; a normal grace period's callbacks are
    # scheduled one jiffy out (cbdelay = 1), which the wheel again rounds to the second tick: tick 4.
    assert len(ran) == 1 and 4 * TICK < ran[0] < 5 * TICK


def test_a_reader_holds_up_the_grace_period():
    sim = Sim(HZ, 0.5)
    ssp = s.SrcuStruct(sim)
    idx = s.srcu_read_lock(ssp)
    sim.at(30_000_000, lambda: s.srcu_read_unlock(ssp, idx))
    s.synchronize_srcu_expedited(ssp)
    assert sim.now >= 30_000_000
    # Expedited, with a reader: polls, then backs off; ends within a few jiffies of the unlock.
    assert sim.now < 30_000_000 + 11 * TICK


def test_unlock_without_lock_is_an_error():
    ssp = s.SrcuStruct(Sim(HZ))
    with pytest.raises(ValueError):
        s.srcu_read_unlock(ssp, 0)


def test_srcu_barrier_waits_for_queued_callbacks_and_starts_nothing_when_empty():
    sim = Sim(HZ, 0.2)
    ssp = s.SrcuStruct(sim)
    s.srcu_barrier(ssp)
    assert sim.now == 0 and not ssp.grace_periods
    ran = []
    s.call_srcu(ssp, lambda: ran.append(1))
    s.srcu_barrier(ssp)
    assert ran == [1] and not ssp.srcu_cblist


def test_cleanup_warns_when_callbacks_are_still_queued():
    sim = Sim(HZ, 0.2)
    ssp = s.SrcuStruct(sim)
    s.call_srcu(ssp, lambda: None)
    assert s.cleanup_srcu_struct(ssp) is False
    assert any("srcu_barrier" in w.message for w in ssp.warnings)


def test_cleanup_after_barrier_is_clean():
    sim = Sim(HZ, 0.2)
    ssp = s.SrcuStruct(sim)
    s.call_srcu(ssp, lambda: None)
    s.srcu_barrier(ssp)
    assert s.cleanup_srcu_struct(ssp) is True and not ssp.warnings


def test_cleanup_with_a_reader_warns():
    ssp = s.SrcuStruct(Sim(HZ))
    s.srcu_read_lock(ssp)
    assert s.cleanup_srcu_struct(ssp) is False
    assert ssp.warnings[0].message == "active SRCU readers"


def test_a_wait_that_can_never_end_is_reported():
    sim = Sim(HZ)
    ssp = s.SrcuStruct(sim)
    s.srcu_read_lock(ssp)  # never unlocked
    with pytest.raises(ModelError, match="never end"):
        sim.wait_for(lambda: False, "nothing")


def test_normal_synchronize_srcu_is_expedited_when_idle():
    sim = Sim(HZ, 0.5)
    ssp = s.SrcuStruct(sim)
    s.synchronize_srcu(ssp)
    assert sim.now < 100_000
