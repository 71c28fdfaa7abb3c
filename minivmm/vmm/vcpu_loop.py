"""The per-vCPU run loop: the hot path of the whole program.

Each vCPU runs :func:`run_vcpu` on its own thread; cffi releases the GIL while the thread is inside
KVM_RUN, so vCPUs run in parallel in the kernel. The loop is an explicit state machine
(:class:`VcpuState`): it leaves RUNNING only for HALTED, FAILED, INTERRUPTED (a stop was requested and
KVM_RUN was interrupted) or ERROR (an ioctl failed). Per-exit work is kept to: one KVM_RUN, one decode,
one counter update, one dispatch. Optional work costs a branch when absent: the shadow's check
(``checker``, which also needs the bus version read before each KVM_RUN) and ``--trace`` (``on_exit``).
"""

from __future__ import annotations

import enum
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from minivmm.kvm.errors import KvmError
from minivmm.kvm.exits import VcpuExit
from minivmm.kvm.vcpu import Vcpu
from minivmm.vmm.dispatch import DispatchStats, ExitDispatcher, Verdict


class VcpuState(enum.Enum):
    """Where a vCPU's run loop is."""

    CREATED = "created"
    RUNNING = "running"
    HALTED = "halted"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    ERROR = "error"


#: Called after each exit is decoded and before it is dispatched: ``(vcpu, exit) -> None``.
ExitHook = Callable[[Vcpu, VcpuExit], None]


class ExitChecker(Protocol):
    """Judges each exit against the bus versions current before and after its KVM_RUN (the shadow)."""

    version: int

    def check_exit(self, vcpu_id: int, exit_: VcpuExit, v_entry: int, v_exit: int) -> None: ...

    def vcpu_done(self, vcpu_id: int) -> None:
        """The vCPU's loop has ended (it reads no more versions)."""
        ...


#: A record's ``error`` when its loop ran out of memory (the supervisor raises MemoryError for it).
OUT_OF_MEMORY = "out of memory"

#: The signal that kicks a vCPU thread out of KVM_RUN. Its handler does nothing: the EINTR is the point.
KICK_SIGNAL = signal.SIGUSR1


def block_process_signals() -> None:
    """Called first on every vCPU thread: process-directed signals (Ctrl-C, SIGTERM) must reach the
    supervising main thread, not a vCPU thread sitting in KVM_RUN, so vCPU threads take only the
    kick signal, as VMMs' vCPU threads do."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


class Joinable(Protocol):
    """A started thread as :func:`stop_vcpu_threads` needs it (threading.Thread, DaemonThread)."""

    @property
    def ident(self) -> int | None: ...

    def join(self, timeout: float | None = None) -> Any: ...


def stop_vcpu_threads(vcpus: list[Vcpu], threads: Sequence[Joinable], done: list[threading.Event]) -> None:
    """Kick each vCPU thread out of KVM_RUN until its loop has ended (its ``done`` event is set).

    The caller has already told the loops to end. ``immediate_exit`` covers a kick that lands just
    before a thread enters KVM_RUN. The wait is on the ``done`` events, never on Thread.join() with a
    timeout: in CPython 3.11 a KeyboardInterrupt that interrupts join() on a live thread marks it
    stopped (the bpo-45274 fix), after which is_alive() lies.
    """
    for vcpu in vcpus:
        vcpu.immediate_exit = True
    while not all(d.is_set() for d in done):
        for t, d in zip(threads, done):
            if not d.is_set() and t.ident is not None:
                try:
                    signal.pthread_kill(t.ident, KICK_SIGNAL)
                except ProcessLookupError:
                    pass  # the thread ended between the check and the kill
        for d in done:
            d.wait(0.01)
    for t in threads:
        t.join()  # each loop has ended: these return at once


class RunControl:
    """Shared by the supervisor and every vCPU loop: ``stopping`` asks the loops to end."""

    __slots__ = ("stopping",)

    def __init__(self, stopping: bool = False) -> None:
        self.stopping = stopping


class VcpuRecord:
    """What one vCPU's loop did; written only by that vCPU's thread while it runs."""

    __slots__ = ("index", "state", "exits", "stats", "last_exit", "first_exit_ns", "entered_ns", "finished_ns",
                 "error", "done")

    def __init__(self, index: int, state: VcpuState = VcpuState.CREATED, exits: dict[type, int] | None = None,
                 stats: DispatchStats | None = None, last_exit: VcpuExit | None = None,
                 first_exit_ns: int | None = None, entered_ns: int | None = None, finished_ns: int | None = None,
                 error: str | None = None) -> None:
        self.index = index
        self.state = state
        self.exits: dict[type, int] = {} if exits is None else exits
        self.stats = DispatchStats() if stats is None else stats
        self.last_exit = last_exit
        self.first_exit_ns = first_exit_ns
        self.entered_ns = entered_ns
        self.finished_ns = finished_ns
        self.error = error
        #: Set by the vCPU's thread as its very last step; the supervisor waits on this (see
        #: stop_vcpu_threads for why not on Thread.join()).
        self.done = threading.Event()


def run_vcpu(vcpu: Vcpu, dispatcher: ExitDispatcher, record: VcpuRecord, control: RunControl,
             on_exit: ExitHook | None = None, checker: ExitChecker | None = None) -> None:
    """Run ``vcpu`` until it halts, fails, errors, or is interrupted after ``control.stopping`` was set.

    With a ``checker``, the checker's version is read just before each KVM_RUN and just after it
    returns, and the exit is judged against that window (no lock is taken).
    """
    counts = record.exits
    stats = record.stats
    handlers = dispatcher.handlers
    run = vcpu.run
    CONTINUE, INTERRUPTED = Verdict.CONTINUE, Verdict.INTERRUPTED
    record.state = VcpuState.RUNNING
    record.entered_ns = time.monotonic_ns()
    block_process_signals()
    check = checker.check_exit if checker is not None else None
    vcpu_id = vcpu.id
    exit_ = None
    try:
        v_entry = checker.version if checker is not None else 0
        exit_ = run()
        record.first_exit_ns = time.monotonic_ns()
        while True:
            cls = type(exit_)
            try:  # try is free in 3.11; += on a present key is cheaper than get() and a store
                counts[cls] += 1
            except KeyError:
                counts[cls] = 1
            if check is not None:
                check(vcpu_id, exit_, v_entry, checker.version)  # type: ignore[union-attr]
            if on_exit is not None:
                on_exit(vcpu, exit_)
            verdict = handlers[cls](exit_, vcpu, stats)  # the dispatcher's handle(), one call less
            if verdict is CONTINUE:
                if control.stopping:
                    record.state = VcpuState.INTERRUPTED
                    break
            elif verdict is INTERRUPTED:
                if control.stopping:
                    record.state = VcpuState.INTERRUPTED
                    break
                vcpu.immediate_exit = False  # a stray signal, not a stop: go on
            elif verdict is Verdict.HALTED:
                record.state = VcpuState.HALTED
                break
            else:
                record.state = VcpuState.FAILED
                break
            if check is not None:
                v_entry = checker.version  # type: ignore[union-attr]
            exit_ = run()
    except KvmError as e:
        record.state = VcpuState.ERROR
        record.error = str(e)
    except MemoryError:
        record.state = VcpuState.ERROR
        record.error = OUT_OF_MEMORY
        raise  # the process is out of memory, not the guest at fault: the main thread re-raises it
    except Exception as e:  # a device or hook bug must end this vCPU with a report, not kill the VMM
        record.state = VcpuState.ERROR
        record.error = f"{type(e).__name__}: {e}"
    finally:
        if checker is not None:
            checker.vcpu_done(vcpu_id)
        record.last_exit = exit_
        record.finished_ns = time.monotonic_ns()
        record.done.set()
