"""Threads whose start never hangs: the VMM's own threads (vCPUs, the stop-signal watcher).

``threading.Thread.start()`` waits, without a timeout, until the new thread reports that it began. In
CPython 3.11 a ``MemoryError`` inside the new thread's bootstrap (under an address-space limit,
``ulimit -v``) happens before that report and loses it: ``start()`` then waits forever, in the main
thread, with the stop signals blocked, so not even SIGTERM ends the process. :class:`DaemonThread`
starts its thread with ``_thread.start_new_thread``, which returns at once, and owns a ``finished``
event that is set however the thread ends: its target returned, raised, or never ran (the
interpreter then reports the failure through ``sys.unraisablehook``, which this module watches while
any of its threads is starting or running).

CPython 3.11 does not always survive that failure even so (the unraisable hook can run out of memory
too, and the interpreter has crashed there), so :func:`reserve_address_space` refuses, before any thread
starts, threads that would not fit under ``RLIMIT_AS``; and each thread gets a stack of
:data:`THREAD_STACK`, not the default (``RLIMIT_STACK``, often 8 MiB of address space per vCPU).

Ownership: ``error`` and ``finished`` are written by the thread itself, or by the unraisable hook on
the thread that failed to begin; everyone else only reads them after ``finished`` is set.
"""

from __future__ import annotations

import _thread
import resource
import sys
import threading
from collections.abc import Callable
from typing import Any

#: The stack of each of the VMM's own threads. Their Python code needs little C stack (3.11 runs Python
#: calls without recursing in C); the deepest C is a device's or the disassembler's, far below this.
THREAD_STACK = 2 << 20

#: What a new thread needs beyond its stack, in address space: its thread state, its first allocations,
#: and room for the exception that reports a failure.
THREAD_HEADROOM = 4 << 20


def reserve_address_space(count: int, limit: int | None = None, in_use: int | None = None) -> None:
    """MemoryError now if ``count`` more threads would not fit under ``RLIMIT_AS`` (``limit``; the
    process's address space in use: ``in_use``, both read from the process by default)."""
    if limit is None:
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY or count <= 0:
        return
    _one_malloc_arena()
    if in_use is None:
        in_use = _vm_size()
    need = count * (THREAD_STACK + THREAD_HEADROOM)
    if in_use + need > limit:
        raise MemoryError(f"{count} thread(s) need {need >> 20} MiB more address space, "
                          f"{max(limit - in_use, 0) >> 20} MiB are left")


_arenas_capped = False


def _one_malloc_arena() -> None:
    """Under an address-space limit, have glibc's malloc serve every thread from its main arena.

    Each thread that mallocs otherwise gets an arena of its own, reserving 64 MiB of address space: 8
    vCPUs reserved over 500 MiB, which counts against RLIMIT_AS though it is never touched, so the limit
    was reached by reservations while the threads' stacks needed 16 MiB. Called only with a finite limit,
    so ctypes is imported only then; elsewhere (no glibc) nothing changes."""
    global _arenas_capped
    if _arenas_capped:
        return
    _arenas_capped = True
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    M_ARENA_MAX = -8  # <malloc.h>
    mallopt(M_ARENA_MAX, 1)


def _vm_size() -> int:
    """The process's address space in use (VmSize), in bytes; 0 where /proc does not say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


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
        """Start the thread; RuntimeError or MemoryError (see :func:`reserve_address_space`) if the
        process cannot create one."""
        _watch_unraisable()
        reserve_address_space(1)
        previous = _thread.stack_size(THREAD_STACK)
        try:
            self.ident = _thread.start_new_thread(self._bootstrap, ())
        finally:
            _thread.stack_size(previous)

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
