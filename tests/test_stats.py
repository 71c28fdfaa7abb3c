"""The shared statistics: percentiles, the stall rule and tick modes (kernel_model.stats)."""

from __future__ import annotations

import random

import pytest

from kernel_model.stats import (STALL_NS, TickModes, is_stall, percentile, percentile_sorted, quantiles, share_below,
                                tick_mode, tick_modes, tick_ns)


def test_percentile_interpolates_between_closest_ranks():
    assert percentile([5, 1, 3, 2, 4], 10) == pytest.approx(1.4)  # numpy.percentile's default method
    assert percentile([4, 1, 3, 2], 50) == pytest.approx(2.5)
    assert percentile_sorted([7], 90) == 7
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_quantiles_are_in_microseconds():
    q = quantiles([3000, 1000, 2000])
    assert q == {"min": 1.0, "max": 3.0, "p10": pytest.approx(1.2), "p50": 2.0, "p90": pytest.approx(2.8)}


def test_a_stall_is_one_millisecond_or_more():
    assert is_stall(STALL_NS)
    assert not is_stall(STALL_NS - 1)


def test_share_below_is_a_comparison_in_probability():
    rng = random.Random(1)
    samples = [rng.uniform(0, 100) for _ in range(20000)]
    shares = share_below(samples, [10, 50, 90])
    assert shares == pytest.approx([0.1, 0.5, 0.9], abs=0.02)
    assert share_below([1, 2, 3], [2]) == [pytest.approx(1 / 3)]  # strictly below


def test_tick_modes_split_on_time_from_slipped_timers():
    tick = tick_ns(250)
    assert tick == 4_000_000
    rng = random.Random(2)
    origin = 4_100_000
    on_time = [origin + rng.uniform(0, tick) for _ in range(900)]
    slipped = [origin + tick + rng.uniform(0, tick) for _ in range(100)]
    m = tick_modes(on_time + slipped, tick, origin)
    assert isinstance(m, TickModes)
    assert m.shares == pytest.approx((0.9, 0.1))
    assert m.share(1) == m.share_from(1) == pytest.approx(0.1)
    assert m.share(5) == 0.0
    p10, p50, p90 = m.within[0]
    assert origin < p10 < p50 < p90 < origin + tick
    # A sample below the origin belongs to mode 0; an empty middle mode has no quantiles.
    m2 = tick_modes([origin - 10, origin + 2 * tick + 5], tick, origin)
    assert m2.shares == (0.5, 0.0, 0.5) and m2.within[1] is None
    assert tick_mode(origin + tick, origin, tick) == 1


def test_tick_modes_refuse_nonsense():
    with pytest.raises(ValueError):
        tick_modes([], 4_000_000, 0)
    with pytest.raises(ValueError):
        tick_mode(1, 0, 0)
    with pytest.raises(ValueError):
        tick_ns(0)


def test_the_stalled_step_is_the_longest_median_only_when_it_is_a_stall():
    from kernel_model.stats import longest_stall
    assert longest_stall([10_000, 5_000_000, 2_000_000]) == 1
    assert longest_stall([10_000, 999_999]) is None
    assert longest_stall([]) is None
