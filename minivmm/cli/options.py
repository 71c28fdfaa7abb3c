"""Parsers for option values people type: sizes (``16M``, ``0x1000000``) and addresses (``0x1000``)."""

from __future__ import annotations

import re

import typer

_SIZE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+)\s*([kKmMgG]i?[bB]?)?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str, option: str = "--mem") -> int:
    """Parse ``16M``, ``1G``, ``4096K``, ``0x1000000`` or ``16777216`` into bytes (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a size (examples: 16M, 1G, 0x1000000)", param_hint=option)
    number = int(m.group(1), 0)
    unit = (m.group(2) or "")[:1].lower()
    return number * _UNITS[unit]


def parse_address(text: str, option: str = "--load-addr") -> int:
    """Parse an address given in hex (``0x1000``) or decimal (``4096``)."""
    try:
        value = int(text.strip(), 0)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an address (examples: 0x1000, 4096)", param_hint=option) from None
    if value < 0:
        raise typer.BadParameter(f"{text!r} is negative", param_hint=option)
    return value
