"""The one duration format of every report, and the format of a change between runs."""

from __future__ import annotations

import pytest

from minivmm.durations import fmt_delta, fmt_us


@pytest.mark.parametrize("us, text", [
    (0.05, "0.1 us"), (5.2, "5.2 us"), (28.24, "28.2 us"), (250, "250.0 us"), (999.94, "999.9 us"),
    (1000, "1.00 ms"), (5710, "5.71 ms"), (15061, "15.06 ms"), (-3.2, "-3.2 us"),
])
def test_a_tenth_of_a_microsecond_below_a_millisecond_and_ten_microseconds_above(us, text):
    assert fmt_us(us) == text


@pytest.mark.parametrize("us, text", [
    (8020, "+8.02 ms"), (157.3, "+157.3 us"), (-1.5, "-1.50 us"), (0.04, "+0.04 us"), (0, "+0.00 us"),
    (-9.994, "-9.99 us"), (10, "+10.0 us"),
])
def test_a_change_carries_its_sign_and_hundredths_below_ten_microseconds(us, text):
    assert fmt_delta(us) == text
