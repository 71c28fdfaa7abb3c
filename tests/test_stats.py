"""The shared statistics: percentiles, the stall rule and tick modes (kernel_model.stats)."""

from __future__ import annotations

import random

import pytest

from kernel_model.stats import (
    STALL_NS,
    TickModes,
    is_stall,
    percentile,
    percentile_sorted,
    quantiles,
    share_below,
    tick_mode,
    tick_modes,
    tick_ns,
)


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


def test_shares_agree_up_to_sampling_noise():
    from kernel_model.stats import shares_agree
    assert shares_agree(0.10, 400, 0.12, 400)
    assert not shares_agree(0.10, 400, 0.25, 400)
    assert shares_agree(0.0, 200, 0.01, 200)  # the floor: one run in a hundred is no difference
    # Two samples of one distribution agree about 99% of the time (the rule's level).
    import random
    rng = random.Random(1)
    hits = 0
    for _ in range(400):
        a = sum(rng.random() < 0.3 for _ in range(200)) / 200
        b = sum(rng.random() < 0.3 for _ in range(200)) / 200
        hits += shares_agree(a, 200, b, 200)
    assert hits >= 380
    with pytest.raises(ValueError):
        shares_agree(0.1, 0, 0.1, 10)


def test_compare_modes_checks_each_modes_share_and_quantiles():
    import random

    from kernel_model.stats import compare_modes
    tick = 4_000_000
    rng = random.Random(2)

    def mixture(n: int, slip: float, shift: int = 0) -> list[float]:
        return [rng.uniform(3e6, 7e6) + shift + (tick if rng.random() < slip else 0) for _ in range(n)]

    same = compare_modes(mixture(400, 0.1), mixture(400, 0.1), tick, 3e6)
    assert same.ok and len(same.shares_ok) == 2 and all(w is not None for w in same.within_ok)
    more_slips = compare_modes(mixture(400, 0.1), mixture(400, 0.3), tick, 3e6)
    assert not more_slips.ok and not all(more_slips.shares_ok)
    later = compare_modes(mixture(400, 0.1), mixture(400, 0.1, shift=900_000), tick, 3e6)
    assert not later.ok and later.within_ok[0] is False and later.below[0][0] > 0.2  # a sits below b
    rare = compare_modes(mixture(400, 0.01), mixture(400, 0.01), tick, 3e6)
    assert rare.within_ok[1] is None  # too few samples in the slipped mode to compare its quantiles
    assert "mode 1" in rare.describe()


def test_trimmed_mean_drops_the_ends_and_moves_by_the_share_that_moved():
    from kernel_model.stats import trimmed_mean
    assert trimmed_mean([1, 2, 3, 4, 100], 0.2) == 3
    assert trimmed_mean([5], 0.1) == 5
    jiffy = 4_000_000
    half = [6_000_000] * 50 + [10_000_000] * 50
    moved = [6_000_000] * 45 + [10_000_000] * 55  # five samples a jiffy later
    assert trimmed_mean(moved) - trimmed_mean(half) == pytest.approx(jiffy * 5 / 80)  # not a whole jiffy
    with pytest.raises(ValueError):
        trimmed_mean([])


def test_student_t_density_and_distribution_agree_with_closed_forms():
    import math

    from kernel_model.stats import student_t_cdf, student_t_logpdf
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    assert student_t_cdf(-2.0, 2) == pytest.approx(0.5 * (1 - 2 / math.sqrt(6)))
    assert math.exp(student_t_logpdf(0.0, 1)) == pytest.approx(1 / math.pi)
    for df in (1, 2, 3, 5, 30):
        assert student_t_cdf(0.0, df) == pytest.approx(0.5)
        h = 1e-5
        for z in (-7.0, -1.0, 0.3, 2.0):  # the distribution's slope is the density
            slope = (student_t_cdf(z + h, df) - student_t_cdf(z - h, df)) / (2 * h)
            assert slope == pytest.approx(math.exp(student_t_logpdf(z, df)), rel=1e-4)
    assert 0 < student_t_cdf(-1e6, 3) < 1e-15  # the far tail keeps its digits


def test_ks_critical_is_exact_for_one_sample_and_shrinks_with_more():
    from kernel_model.stats import ks_critical
    assert ks_critical(1, 0.01) == pytest.approx(0.995)
    assert ks_critical(100, 0.05) == pytest.approx(1.358 / (10 + 0.12 + 0.011), rel=0.01)
    assert ks_critical(1000, 0.01) < ks_critical(100, 0.01) < ks_critical(10, 0.01)
