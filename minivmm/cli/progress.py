"""A one-line progress bar on stderr, drawn only when stderr is a terminal (no library needed)."""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time); mypy knows the name
if TYPE_CHECKING:
    from types import TracebackType
    from typing import TextIO


class ProgressBar:
    """``label [#####.....] 12/100  ~3s left``, redrawn in place on ``out``; erased when done.

    Silent unless ``out`` is a terminal, so logs and pipes get no control characters.
    """

    def __init__(self, label: str, total: int, out: TextIO, width: int = 30) -> None:
        self.label = label
        self.total = max(total, 1)
        self.out = out
        self.width = width
        self.enabled = _isatty(out)
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def __enter__(self) -> ProgressBar:
        self._start = time.monotonic()
        self.update(0)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.clear()

    def update(self, done: int) -> None:
        """Show ``done`` of ``total``; redraws at most 20 times a second (and always at the end)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if done < self.total and now - self._last_draw < 0.05:
            return
        self._last_draw = now
        filled = self.width * done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        eta = ""
        if 0 < done < self.total:
            eta = f"  ~{(now - self._start) / done * (self.total - done):.0f}s left"
        self._write(f"\r{self.label} [{bar}] {done}/{self.total}{eta}\x1b[K")
        self._drawn = True

    def clear(self) -> None:
        """Erase the bar (the line is left empty for what is printed next)."""
        if self._drawn:
            self._write("\r\x1b[K")
            self._drawn = False

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not end the measurement
            self.enabled = False


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False
