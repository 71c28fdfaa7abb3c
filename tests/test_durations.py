"""The one duration format of every report."""

from __future__ import annotations

import pytest

from minivmm.durations import fmt_delta, fmt_us


@pytest.mark.parametrize("us, text", [
    (0.05, "0.05 us"), (5.2, "5.20 us"), (9.996, "10.0 us"), (28.24, "28.2 us"), (99.96, "100 us"),
    (115.4, "115 us"), (999.4, "999 us"), (999.6, "1.00 ms"), (5710, "5.71 ms"), (15061, "15.06 ms"),
    (-3.2, "-3.20 us"), (0, "0.00 us"),
])
def test_three_significant_digits_below_a_millisecond_and_ten_microseconds_above(us, text):
    assert fmt_us(us) == text


def test_a_change_always_carries_its_sign():
    assert fmt_delta(8020) == "+8.02 ms" and fmt_delta(-1.5) == "-1.50 us" and fmt_delta(0) == "+0.00 us"
