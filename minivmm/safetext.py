"""Untrusted text made safe to print: what a JSON document, a file name or a traced program says never
reaches a terminal as a control sequence.

A terminal acts on control characters: ESC starts a sequence that can retitle the window, move the
cursor or clear the screen (OSC, CSI), BEL rings, CR overwrites the line already printed, and C1
controls (U+0080-U+009F) are ESC sequences in one character on some terminals. :func:`safe` writes
every such character, and a lone surrogate (which cannot be encoded as UTF-8), as a visible escape
(``\\x1b``, ``\\u009b``, ``\\udc80``); everything else is left as it is, non-ASCII letters included.
"""

from __future__ import annotations

import re

# C0 controls (tab and newline too: a label or path is one line), DEL, C1 controls, lone surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def safe(text: object) -> str:
    """``str(text)`` with every control character and lone surrogate written as an escape."""
    return _UNSAFE.sub(_escape, str(text))


def is_safe(text: str) -> bool:
    """Whether ``text`` holds no control character and no lone surrogate."""
    return _UNSAFE.search(text) is None
