"""The run's lifecycle under signals: stop requests, the kick handler, and the vCPU threads' start and stop.

The rules (each one closes a way the VMM used to crash when a signal came at the wrong moment):

- A stop signal only records which signal came first (:class:`StopRequest`): it is taken by a watcher
  thread, so no exception is raised into whatever the main thread was doing (a ``join``, a lock, an
  ``munmap``). A second signal means "already stopping" and changes nothing. The supervisor polls.
- vCPU threads are started inside the region whose ``finally`` stops them (:class:`VcpuThreads`).
- On every path: stop, join, then release. Nothing unmaps a vCPU's ``kvm_run`` while its thread lives.
- The kick handler (:data:`~minivmm.vmm.vcpu_loop.KICK_SIGNAL`) is installed before the first thread
  starts and restored only after the last one is joined, so a kick never meets the default action
  (which would terminate the process).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from minivmm.kvm.vcpu import Vcpu
from minivmm.threads import DaemonThread, reserve_address_space
from minivmm.vmm.outcome import RunOutcome
from minivmm.vmm.vcpu_loop import KICK_SIGNAL, OUT_OF_MEMORY, RunControl, VcpuRecord, stop_vcpu_threads

#: The signals that stop a run, and the outcome each means.
STOP_SIGNALS: dict[int, RunOutcome] = {signal.SIGINT: RunOutcome.INTERRUPTED,
                                       signal.SIGTERM: RunOutcome.TERMINATED}

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class StopRequest:
    """Which stop signal (SIGINT, SIGTERM) arrived first, if any.

    Set by a watcher thread that takes the stop signals with ``sigtimedwait`` while every other thread
    blocks them (:func:`install_stop_handlers`). So no handler ever runs on the main thread (nothing
    interrupts a join, a lock or an munmap), and the order of arrival is exact: the kernel dequeues each
    signal for the waiting thread as it arrives (with ordinary handlers, two signals pending together
    are run newest-frame-first, and Python then runs its handlers in signal-number order).
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def request(self, signum: int) -> None:
        """Record a stop signal: the first decides; a second one means "already stopping"."""
        if self.signum is None:
            self.signum = signum

    @property
    def outcome(self) -> RunOutcome | None:
        """INTERRUPTED or TERMINATED once a stop was requested, else None."""
        return STOP_SIGNALS.get(self.signum) if self.signum is not None else None


def install_stop_handlers(stop: StopRequest) -> Callable[[], None]:
    """From now on SIGINT and SIGTERM only set ``stop``; return the function that puts things back.

    The signals are blocked in the calling thread (which must be the main thread, before it starts any
    other: threads inherit the mask) and taken by a watcher thread. A SIGINT that is ignored (a
    background job of a non-interactive shell) stays ignored, as Unix programs do.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("stop signals are handled from the main thread")
    signals = {signum for signum in STOP_SIGNALS
               if not (signum == signal.SIGINT and signal.getsignal(signum) is signal.SIG_IGN)}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    closing = threading.Event()

    def watch() -> None:
        # No timeout: a thread sitting in sigwaitinfo takes each signal as it arrives, so the first one
        # is known exactly (a thread that must come back for the GIL between waits could find two
        # pending, which the kernel hands out lowest-numbered first).
        while True:
            info = signal.sigwaitinfo(signals)
            if closing.is_set():
                return
            stop.request(info.si_signo)

    watcher = DaemonThread(watch, name="stop-signals")
    try:
        watcher.start()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise

    def restore() -> None:
        closing.set()
        if watcher.ident is not None:
            try:
                signal.pthread_kill(watcher.ident, next(iter(signals)))  # wakes it: it sees closing, ends
            except ProcessLookupError:
                pass  # it took a real signal just now, saw closing and has ended
        watcher.join()
        # A stop signal that came while the watcher was ending is still pending for the process: taken
        # here, it counts as the run's (first, or "already stopping"), instead of being delivered, once
        # the old mask is back, as a KeyboardInterrupt at whatever line the caller has reached.
        while (info := signal.sigtimedwait(signals, 0)) is not None:
            stop.request(info.si_signo)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return restore


def restore_handlers(previous: dict[int, _Handler]) -> None:
    """Put back signal handlers (as ``signal.signal`` returned them)."""
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextmanager
def stop_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """SIGINT and SIGTERM set ``stop`` for the duration of the ``with`` block."""
    restore = install_stop_handlers(stop)
    try:
        yield stop
    finally:
        restore()


def _kicked(signum: int, frame: FrameType | None) -> None:
    """The kick's handler does nothing: the EINTR it causes in KVM_RUN is the point."""


@contextmanager
def kick_handler() -> Iterator[None]:
    """The kick signal is handled (as a no-op) for the duration of the ``with`` block."""
    previous: dict[int, _Handler] = {KICK_SIGNAL: signal.signal(KICK_SIGNAL, _kicked)}
    try:
        yield
    finally:
        restore_handlers(previous)


class VcpuThreads:
    """The vCPU threads of one run, each running ``loop(vcpu, record, control)`` (``run_vcpu`` with the
    run's dispatcher bound). :meth:`start` and :meth:`stop_and_join` are each safe to call at any point:
    only started threads are stopped, and stopping twice is harmless."""

    def __init__(self, vcpus: list[Vcpu], records: list[VcpuRecord], control: RunControl,
                 loop: Callable[[Vcpu, VcpuRecord, RunControl], None]) -> None:
        self.vcpus = vcpus
        self.records = records
        self.control = control
        # Each thread's ``finished`` is its record's ``done``: set however the thread ends, even if its
        # loop never began (a MemoryError before run_vcpu's try, or in the thread's bootstrap).
        self.threads = [DaemonThread(loop, (vcpu, records[i], control), name=f"vcpu{i}", finished=records[i].done)
                        for i, vcpu in enumerate(vcpus)]
        self.started = 0

    def start(self) -> None:
        """Start every thread (each blocks the stop signals first thing: see ``run_vcpu``); MemoryError
        before the first if they would not all fit in the address space left."""
        reserve_address_space(len(self.threads))
        for t in self.threads:
            t.start()
            self.started += 1

    def failure(self) -> BaseException | None:
        """What a started thread raised instead of reporting in its record: a MemoryError (the process
        is out of address space, not the guest at fault), or what kept its bootstrap from running its
        loop. Read after :meth:`stop_and_join`."""
        for t, record in zip(self.threads[:self.started], self.records):
            if t.error is not None:
                return t.error
            if record.error == OUT_OF_MEMORY:  # its loop said so before the thread stored the exception
                return MemoryError(f"{t.name}: out of memory")
        return None

    def stop_and_join(self) -> None:
        """Ask every loop to end, kick the started threads out of KVM_RUN and join them."""
        self.control.stopping = True
        n = self.started
        stop_vcpu_threads(self.vcpus[:n], self.threads[:n], [r.done for r in self.records[:n]])

    def alive(self) -> bool:
        """Whether any started thread has not finished its loop."""
        return any(not r.done.is_set() for r in self.records[:self.started])
