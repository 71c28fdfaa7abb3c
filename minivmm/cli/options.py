"""Parsers for option values people type, as argparse ``type=`` callables with our own wording.

Each raises ``argparse.ArgumentTypeError`` with a message that reads after the option's name
(``--mem: 'lots' is not a size ...``); :mod:`minivmm.cli.app` puts the option name in front.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

_SIZE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+)\s*([kKmMgG]i?[bB]?)?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

def parse_size(text: str) -> int:
    """Parse ``16M``, ``1G``, ``4096K``, ``0x1000000`` or ``16777216`` into bytes (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 16M, 1G, 0x1000000)")
    number = int(m.group(1), 0)
    unit = (m.group(2) or "")[:1].lower()
    return number * _UNITS[unit]


def parse_address(text: str) -> int:
    """Parse an address given in hex (``0x1000``) or decimal (``4096``)."""
    try:
        value = int(text.strip(), 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address (examples: 0x1000, 4096)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """A parser for a whole number in [lo, hi] (decimal, or 0x hex); ``None`` leaves a side open."""
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bound = (f"between {lo} and {hi}" if lo is not None and hi is not None
                     else f"at least {lo}" if lo is not None else f"at most {hi}")
            raise argparse.ArgumentTypeError(f"{value} is out of range: it must be {bound}")
        return value
    parse.__name__ = "number"  # argparse names the type in a few of its own messages
    return parse


def float_range(lo: float, hi: float | None = None) -> Callable[[str], float]:
    """A parser for a number in [lo, hi]."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value == value or value < lo or (hi is not None and value > hi):  # NaN fails too
            bound = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {bound}")
        return value
    parse.__name__ = "number"
    return parse


def choice(values: tuple[str, ...], what: str) -> Callable[[str], str]:
    """A parser for one of ``values`` (case-insensitive), saying which ones when it refuses.

    Used for enums too, without importing the enum's module at start-up: the command converts the
    returned string with ``Enum(value)`` once it runs."""
    def parse(text: str) -> str:
        if text.lower() in values:
            return text.lower()
        raise argparse.ArgumentTypeError(f"{text!r} is not {what} ({', '.join(values)})")
    parse.__name__ = "choice"
    return parse
