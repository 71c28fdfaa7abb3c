"""Durations written for people: the one format every report uses (timing, trace, model, compare, repro).

A duration is in microseconds to a tenth below a millisecond and in milliseconds to 10 µs above
(``28.2 us``, ``250.0 us``, ``5.71 ms``): a jiffy's fraction is what a reader of stalls compares, and a
tenth of a µs is below any ioctl's run-to-run spread. A *change* between two runs keeps hundredths
below 10 µs (``+0.04 us``): the difference of two 1 µs ioctls' trimmed means is what ``compare`` and
the gate report. ``us`` rather than ``µs``: the reports are read in terminals, mail and CI logs whose
encodings are not ours to choose.
"""

from __future__ import annotations


def fmt_us(us: float) -> str:
    """28.2 us, 250.0 us, 5.71 ms: a duration given in microseconds, for people."""
    return f"{us / 1000:.2f} ms" if abs(us) >= 1000 else f"{us:.1f} us"


def fmt_delta(us: float) -> str:
    """A signed change, with hundredths below 10 us: +8.02 ms, +157.3 us, -1.50 us, +0.04 us."""
    size = abs(us)
    return ("+" if us >= 0 else "-") + (f"{size:.2f} us" if size < 10 else fmt_us(size))
