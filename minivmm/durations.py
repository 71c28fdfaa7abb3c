"""Durations written for people: the one format every report uses (timing, trace, model, compare, repro).

Microseconds below a millisecond, to three significant digits (so a sub-µs change of a 1 µs ioctl stays
visible and a wide table stays narrow: ``0.05 us``, ``5.20 us``, ``28.2 us``, ``250 us``); milliseconds
above, to 10 µs (``5.71 ms``, ``15.06 ms``: a jiffy's fraction is what a reader of stalls compares).
``us`` rather than ``µs``: the reports are read in terminals, mail and CI logs whose encodings are not
ours to choose.
"""

from __future__ import annotations


def fmt_us(us: float) -> str:
    """0.05 us, 28.2 us, 250 us, 5.71 ms: a duration given in microseconds, for people."""
    size = abs(us)
    if size >= 999.5:  # what would round to "1000 us" is written as 1.00 ms
        return f"{us / 1000:.2f} ms"
    if size >= 99.95:
        return f"{us:.0f} us"
    return f"{us:.1f} us" if size >= 9.995 else f"{us:.2f} us"


def fmt_delta(us: float) -> str:
    """A signed change: +8.02 ms, -1.50 us."""
    return ("+" if us >= 0 else "-") + fmt_us(abs(us))
