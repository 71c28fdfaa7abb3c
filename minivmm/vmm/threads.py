"""Threads whose start never hangs: the VMM's own threads (vCPUs, the stop-signal watcher).

``threading.Thread.start()`` waits, without a timeout, until the new thread reports that it began. In
CPython 3.11 a ``MemoryError`` inside the new thread's bootstrap (under an address-space limit,
``ulimit -v``) happens before that report and loses it: ``start()`` then waits forever, in the main
thread, with the stop signals blocked, so not even SIGTERM ends the process. :class:`DaemonThread`
starts its thread with ``_thread.start_new_thread``, which returns at once, and owns a ``finished``
event that is set however the thread ends: its target returned, raised, or never ran (the
interpreter then reports the failure through ``sys.unraisablehook``, which this module watches while
any of its threads is starting or running).

Ownership: ``error`` and ``finished`` are written by the thread itself, or by the unraisable hook on
the thread that failed to begin; everyone else only reads them after ``finished`` is set.
"""

from __future__ import annotations

import _thread
import sys
import threading
from collections.abc import Callable
from typing import Any


class DaemonThread:
    """A daemon thread running ``target(*args)``; :meth:`start` returns without waiting for it."""

    def __init__(self, target: Callable[..., object], args: tuple[Any, ...] = (), name: str = "",
                 finished: threading.Event | None = None) -> None:
        self.target = target
        self.args = args
        self.name = name
        self.ident: int | None = None
        #: What the target raised, or what kept the thread from starting (None if it returned).
        self.error: BaseException | None = None
        #: Set when the thread has ended, whichever way (the caller may pass an event it already waits on).
        self.finished = threading.Event() if finished is None else finished

    def start(self) -> None:
        """Start the thread; RuntimeError (or MemoryError) if the process cannot create one."""
        _watch_unraisable()
        self.ident = _thread.start_new_thread(self._bootstrap, ())

    def _bootstrap(self) -> None:
        try:
            self.target(*self.args)
        except BaseException as e:  # the starter reads it: a thread has no one else to report to
            self.error = e
        finally:
            self.finished.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the thread has ended (at most ``timeout`` seconds); whether it has."""
        return self.finished.wait(timeout)

    def is_alive(self) -> bool:
        """Whether the thread was started and has not ended."""
        return self.ident is not None and not self.finished.is_set()


_previous_hook: Callable[[Any], object] | None = None


def _watch_unraisable() -> None:
    """Install (once) the hook that ends a :class:`DaemonThread` whose bootstrap failed."""
    global _previous_hook
    if _previous_hook is None:
        _previous_hook = sys.unraisablehook
        sys.unraisablehook = _unraisable


def _unraisable(unraisable: Any) -> None:
    owner = getattr(unraisable.object, "__self__", None)
    if isinstance(owner, DaemonThread) and owner.error is None:
        owner.error = unraisable.exc_value
        owner.finished.set()
        return  # the starter reports it, as one line
    assert _previous_hook is not None
    _previous_hook(unraisable)
