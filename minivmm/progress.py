"""Progress bars on stderr, drawn with rich when stderr is a terminal, for the long runs: ``timing``,
``timing --calibrate``, ``trace``'s explanation and the differential harness.

rich is imported only when a bar is drawn (it costs more start-up than a whole ``minivmm boot``), so a
run into a pipe or a log imports nothing and writes no control characters. A bar never starts a thread
of its own while a measurement runs: :class:`ProgressBar` redraws from ``update`` (at most 20 times a
second), so the timed ioctls share the CPUs with nothing new. Only :class:`Working`, for work that
cannot report how far it is (an explanation), lets rich animate from its refresh thread.

Usage::

    with ProgressBar("timing registrations-first", repeat) as bar:
        measure(..., on_progress=bar.update)
"""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time); mypy knows the name
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any, TextIO

#: Redraws per second at most: the eye sees no more, and a redraw costs the measured process CPU time.
MAX_REDRAWS_PER_S = 20


def drawn_on(stream: TextIO | None) -> bool:
    """Whether a bar is drawn on ``stream``: only on a terminal."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Drawn:
    """What both bars share: the stream, the rich Progress while one is drawn, and its end."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self._progress: Any = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            try:
                self._progress.stop()  # transient: the bar's line is erased
            except (OSError, ValueError):
                pass
            self._progress = None


class ProgressBar(_Drawn):
    """``label ━━━━━━━━╺━━━━ 12/100 0:00:03``, redrawn in place on ``stream`` (stderr by default) and erased
    when done; nothing at all unless ``stream`` is a terminal. Call :meth:`update` with the count done."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        super().__init__(label, stream)
        self.total = max(total, 1)
        self._task: Any = None
        self._last_draw = 0.0

    def __enter__(self) -> ProgressBar:
        if drawn_on(self.stream):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeRemainingColumn(), console=Console(file=self.stream), transient=True,
                                      auto_refresh=False)
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total)
            self._progress.refresh()
        return self

    def update(self, done: int) -> None:
        """Show ``done`` of ``total`` (redrawn at most MAX_REDRAWS_PER_S times a second, and at the end)."""
        if self._progress is None:
            return
        now = time.monotonic()
        if done < self.total and now - self._last_draw < 1 / MAX_REDRAWS_PER_S:
            return
        self._last_draw = now
        try:
            self._progress.update(self._task, completed=done)
            self._progress.refresh()
        except (OSError, ValueError):  # a closed or broken stderr must not end the measurement
            self._progress = None


class Working(_Drawn):
    """A pulsing bar with the time spent, for work that cannot say how far it is; rich animates it from
    its own thread. Nothing unless ``stream`` (stderr by default) is a terminal."""

    def __enter__(self) -> Working:
        if drawn_on(self.stream):
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                                      console=Console(file=self.stream), transient=True)
            self._progress.add_task(self.label, total=None)
            self._progress.start()
        return self
