"""The tracer: run COMMAND under ptrace with a seccomp filter that stops it only on KVM ioctls.

How a KVM ioctl is seen: the filter (:func:`minivmm.trace.syscalls.seccomp_kvm_filter`) returns
SECCOMP_RET_TRACE for it, the tracee stops (PTRACE_EVENT_SECCOMP), the tracer reads the registers and the
argument struct, notes what the fd pointed to, and resumes it with PTRACE_CONT: one stop per KVM ioctl.
What the tracee waits for runs in C (``minivmm_trace_wait`` in ``minivmm._trace``: registers, struct, the
fd's /proc link, PTRACE_CONT), steered by ``struct minivmm_fast``, which this module keeps true; the
bookkeeping (Python) follows while the tracee runs. The kernel clock (:mod:`minivmm.trace.kclock`) gives
the call's duration and result afterwards, and the fd's role follows from the results in the kernel's
order (:mod:`minivmm.trace.fds`). Without the kernel clock (or for a 32-bit call, which the syscall
tracepoints do not report), the call is also stopped at its exit (PTRACE_SYSCALL), where the tracer reads
the result and its own clock.

Every other system call runs without stopping. Threads and children are followed
(PTRACE_O_TRACECLONE/FORK/VFORK, the filter is inherited); PTRACE_O_EXITKILL kills the tracees if the
tracer dies, so a tracee is never left stopped or orphaned.

Signals pass through: a signal-delivery-stop is resumed with the same signal, a group-stop is kept
(PTRACE_LISTEN), so the tracee behaves as it does without the tracer (see ``man 2 ptrace``,
"Signal-delivery-stop" and "Group-stop").

The stop conditions (:class:`StopReason`): every tracee has exited; ``until_first_run`` (every created
vCPU has entered KVM_RUN and its first KVM_RUN returned, or did not return within
``FIRST_RUN_GRACE_NS``), then SIGTERM to the VMM or, with ``detach``, hand-over to a background
servicer; the timeout; SIGINT/SIGTERM/SIGHUP to the tracer. Whenever the tracer ends the VMM it sends
SIGTERM, then SIGKILL ``TERM_GRACE_NS`` later if it is still there (at once on a second SIGTERM).

Threads: everything here runs on the one thread that called :meth:`Tracer.run` (ptrace requires it);
the signal handlers only count signals in ``_flags``, which the loop reads.
"""

from __future__ import annotations

import enum
import errno as _errno
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from minivmm.timing.pressure import BUSY_PRESSURE_PCT, PressureWindow, busy_now, runnable_tasks
from minivmm.trace import decode, kclock
from minivmm.trace.eventlog import DEFAULT_LIMIT, Clock, EventLog, IoctlEvent
from minivmm.trace.fds import LINK_GONE, LINK_OTHER, LINK_VM, ProcessFds, kind_of_link, link_kind
from minivmm.trace.kclock import KernelClock, KernelClockUnavailable
from minivmm.trace.srcu_check import SrcuTimeline
from minivmm.trace.syscalls import (
    IOCTL_NUMBERS,
    KVMIO,
    SpawnError,
    TraceOSError,
    check_errno,
    event_message,
    exec_failure,
    ffi,
    getregs,
    kill,
    lib,
    ptrace,
    spawn,
    waitpid,
)
from minivmm.tracefs import Record

__all__ = ["AttachError", "Clock", "IoctlEvent", "PtraceDenied", "StopReason", "TeardownCall", "TraceResult", "Tracer",
           "spawn_failure_message"]

#: After every vCPU has entered KVM_RUN, how long to wait for the first exits before stopping anyway.
FIRST_RUN_GRACE_NS = 200_000_000
#: After a stop, how long the tracer polls (waitpid WNOHANG, yielding the CPU between tries) for the next
#: before it sleeps in waitpid. Where idle CPUs halt (a VM host without guest halt-polling), a sleeping
#: tracer and a stopped tracee are each woken from a halted CPU at every stop, which costs more than the
#: stop itself; polling answers the next stop at once, and yielding lets a tracee woken on the tracer's
#: CPU run there at once (a poll without it made a set-up's calls wait out the window). Measured by
#: scripts/bench_trace_overhead.py: a tight loop of KVM ioctls costs less than half as much per call.
#: The price: up to this much of the tracer's CPU time after each stop, none while no KVM ioctl comes.
#: While the host is busy (more runnable tasks than CPUs, or CPU pressure over BUSY_PRESSURE_PCT; looked
#: at every 0.1 s) it does not poll: there a yield makes the program's next stop wait for another task,
#: for milliseconds.
POLL_STOPS_NS = 50_000
#: After SIGTERM (ours), how long the VMM has before SIGKILL.
TERM_GRACE_NS = 5_000_000_000
#: After the user's Ctrl-C (which the tracee usually got from the terminal too), before our SIGTERM.
INTERRUPT_GRACE_NS = 1_000_000_000
#: How often the kernel's record is read while tracing: often while a first KVM_RUN's result is awaited
#: (``--until first-run`` decides on it), else just often enough that the buffers never fill.
POLL_FIRST_RUN_NS = 20_000_000
POLL_NS = 250_000_000
#: Bytes of the kernel's record read but not decoded, above which it is decoded while tracing runs.
DECODE_BACKLOG = 8 << 20
_TIMER_TICK_S = 0.1
WALL: int = getattr(lib, "__WALL")  # a dunder name: not written as lib.__WALL inside a class (name mangling)
#: ptrace's data argument for each signal number (0: none), made once.
_SIGNALS = [ffi.cast("void *", n) for n in range(65)]

_STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
_KVM_RUN = decode.KVM_RUN
_CREATE_VM, _CREATE_VCPU = decode.KVM_CREATE_VM, decode.KVM_CREATE_VCPU
_NR_IOCTL, _NR_IOCTL_I386 = lib.SYS_ioctl, lib.MINIVMM_NR_IOCTL_I386
_FAST_FDS = lib.MINIVMM_FAST_FDS


def _fast_table() -> Any:
    """A ``struct minivmm_fast`` with what never changes: KVM_RUN's number and, by _IOC_NR, each decoded
    request's argument struct size (-1 where two decoded requests share a number, or a struct would not
    fit: the tracer takes those itself). No fd is known yet and ``one_stop`` is off."""
    fast = ffi.new("struct minivmm_fast *")
    fast.kvm_run = _KVM_RUN & 0xFFFFFFFF
    fast.kvm_type = KVMIO
    for request, struct in decode.STRUCTS.items():
        nr, size = request & 0xFF, decode.struct_size(struct)
        taken = fast.request_of_nr[nr] != 0 or fast.size_of_nr[nr] != 0
        fast.request_of_nr[nr] = request
        fast.size_of_nr[nr] = -1 if taken or size > lib.MINIVMM_RAW_MAX else size
    return fast


def poll_window(poll_ns: int) -> int:
    """How long the tracer polls after a stop: ``poll_ns``, or 0 where it may run on one CPU only (the
    tracee, which inherits that, could not run while the tracer polls: every poll would be waited out)."""
    return poll_ns if len(os.sched_getaffinity(0)) > 1 else 0


def _stop_struct(stop: Any) -> bytes | None:
    """The argument struct's bytes as :func:`decode.capture` gives them, from what the C path took."""
    raw_len = stop.raw_len
    if raw_len >= 0:
        return bytes(ffi.unpack(stop.raw, raw_len))
    if raw_len == lib.MINIVMM_RAW_LEFT:
        return decode.capture(stop.tid, stop.request, stop.arg)
    return decode.UNREADABLE if raw_len == lib.MINIVMM_RAW_UNREADABLE else None


def _stop_link(stop: Any) -> int:
    """What the stopped call's fd is: from the /proc link the C path read at the stop, else read now (the
    tracee still waits)."""
    n = stop.link_len
    if n >= 0:
        return kind_of_link(ffi.unpack(stop.link, n).decode(errors="replace"))
    return LINK_GONE if n == lib.MINIVMM_LINK_GONE else link_kind(stop.tid, stop.fd)


#: For stops taken outside the loop (``_take_stop``): the C path reads, and never resumes (no fd is known).
_READ_ONLY = _fast_table()


class PtraceDenied(RuntimeError):
    """PTRACE_SEIZE was refused (another tracer, Yama, a container's profile, no CAP_SYS_PTRACE); the
    message says why, as far as this host tells, and how to allow it."""


class StopReason(str, enum.Enum):
    """Why tracing ended."""

    EXITED = "exited"
    FIRST_RUN = "first-run"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    TERMINATED = "terminated"


@dataclass
class TeardownCall:
    """A ``close()`` of a VM or vCPU fd, or the ``exit_group`` of a process that had KVM fds, as the kernel
    recorded it (no ptrace stop): ``ret`` is close's result or exit_group's status; for exit_group,
    ``exit_ns`` is when the tracer learnt that the process was gone (its own clock, the same base)."""

    kind: str               # "close" or "exit_group"
    pid: int
    tid: int
    fd: int | None
    role: str | None
    enter_ns: int
    exit_ns: int | None = None
    ret: int | None = None

    @property
    def duration_ns(self) -> int | None:
        """From entering the call to its return (close) or to the process being gone (exit_group)."""
        return None if self.exit_ns is None else self.exit_ns - self.enter_ns


@dataclass
class TraceResult:
    """What the tracer saw, and how it ended."""

    argv: list[str]
    pid: int
    events: EventLog | list[IoctlEvent]
    stop_reason: StopReason
    clock: Clock
    clock_note: str
    exit_code: int | None = None          # the tracee's exit code, if it exited
    exit_signal: int | None = None        # the signal that killed it, if one did
    detached: bool = False
    ended_by_tracer: bool = False         # we sent the SIGTERM/SIGKILL that ended it
    killed_after_grace: bool = False      # it outlived SIGTERM by TERM_GRACE_NS and got SIGKILL
    later_kvm_runs: int = 0               # KVM_RUN calls after each vCPU's first (not recorded)
    forks: list[tuple[int, int]] = field(default_factory=list)
    execs: list[tuple[int, str]] = field(default_factory=list)
    signals: list[tuple[int, int]] = field(default_factory=list)   # (tid, signal) passed through
    stops: int = 0                        # ptrace stops handled
    overruns: int = 0
    unfinished_first_runs: list[str] = field(default_factory=list)
    teardown: list[TeardownCall] = field(default_factory=list)
    #: Whether close()/exit_group were recorded (the kernel clock with their tracepoints).
    teardown_recorded: bool = False
    #: The SRCU grace-period machinery as the kernel recorded it (None: not recorded; ``srcu_note`` why).
    srcu: SrcuTimeline | None = None
    srcu_note: str = ""
    #: ``-p``: the process was running before and was attached to (and is let go at the end).
    attached: bool = False
    #: KVM ioctls made through a 32-bit ABI (i386, x32): timed by the tracer's stops, which the kernel's
    #: syscall tracepoints do not report.
    compat_calls: int = 0
    #: The index of each successful KVM_CREATE_VM -> the role of the VM it made (``vm``, ``vm1``...).
    vms_created: dict[int, str] = field(default_factory=dict)
    #: SIGINT, SIGTERM or SIGHUP, the first of them the tracer was sent while it ran, whenever it came:
    #: also after the program had reached its stop (``stop_reason`` then still says which), which a
    #: caller running the tracer again and again must not lose (None: none came).
    interrupted_by: str | None = None


class _Proc:
    """Per traced process (thread group). Owned by the tracer's thread."""

    def __init__(self, tgid: int, fds: ProcessFds | None = None) -> None:
        self.tgid = tgid
        self.fds = fds or ProcessFds()
        #: vCPU fds: created (and not closed), whose KVM_RUN stopped, whose first KVM_RUN returned an exit.
        self.vcpu_fds: dict[int, str] = {}
        self.run_started: set[int] = set()
        self.run_done: set[int] = set()
        #: fd -> what /proc said it was at its first KVM ioctl (kept only while the kernel's record of
        #: close() says the fd stayed open).
        self.links: dict[int, int] = {}
        #: Whether it has made a KVM ioctl (a process that never does, a shell around the VMM, say, has no
        #: say in what the C stop path may do).
        self.uses_kvm = False

    def forget_vcpu(self, fd: int) -> None:
        self.vcpu_fds.pop(fd, None)
        self.run_started.discard(fd)
        self.run_done.discard(fd)


class AttachError(RuntimeError):
    """``-p PID`` names no process that can be traced; the message says why."""


def _running_process(pid: int) -> _Proc:
    """A process we attach to: its VM and vCPU fds named from /proc (a vCPU's VM is known only when the
    process has one VM). Its vCPUs ran long before us: their KVM_RUNs are counted, not recorded."""
    fds = ProcessFds()
    for fd, link in sorted(_kvm_fds(pid).items()):
        if link == LINK_VM:
            fds.created_vm(fd)
    vms = list(fds.roles.values())
    proc = _Proc(pid, fds)
    for fd, link in sorted(_kvm_fds(pid).items()):
        if link >= 0:
            proc.vcpu_fds[fd] = fds.created_vcpu(fd, link, vms[0] if len(vms) == 1 else "vm?")
            proc.run_done.add(fd)
    return proc


def _tasks(pid: int) -> list[int]:
    """The thread ids of a process (empty if there is no such process)."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if t.isdigit())
    except OSError:
        return []


def _kvm_fds(pid: int) -> dict[int, int]:
    """A running process's KVM fds and their link kinds (see minivmm.trace.fds.link_kind)."""
    out: dict[int, int] = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        if name.isdigit() and (kind := link_kind(pid, int(name))) not in (LINK_GONE, LINK_OTHER):
            out[int(name)] = kind
    return out


def _tgid_of(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return tid


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


OPTIONS = (lib.PTRACE_O_TRACESYSGOOD | lib.PTRACE_O_TRACESECCOMP | lib.PTRACE_O_TRACECLONE
           | lib.PTRACE_O_TRACEFORK | lib.PTRACE_O_TRACEVFORK | lib.PTRACE_O_TRACEEXEC | lib.PTRACE_O_EXITKILL)
#: ``-p``: no EXITKILL (the process is not ours to end when we go) and no seccomp (it has no filter of ours).
ATTACH_OPTIONS = (lib.PTRACE_O_TRACESYSGOOD | lib.PTRACE_O_TRACECLONE | lib.PTRACE_O_TRACEFORK
                  | lib.PTRACE_O_TRACEVFORK | lib.PTRACE_O_TRACEEXEC)
_NOT_IN_KERNEL = -1  # in_kernel: a kernel enter with no recorded stop (a later KVM_RUN)
_NEVER = 1 << 62


class Tracer:
    """Start ``argv`` (``path`` resolved by the caller) and record its KVM ioctls. One use."""

    def __init__(self, path: str, argv: list[str], env: dict[str, str] | None = None, *,
                 until_first_run: bool = False, detach: bool = False, timeout_s: float | None = None,
                 clock: str = "auto", on_detach: Any = None, limit: int = DEFAULT_LIMIT,
                 attach_pid: int | None = None, on_start: Any = None, poll_ns: int = POLL_STOPS_NS,
                 discard_output: bool = False) -> None:
        self.path, self.argv = path, argv
        #: The started program's standard output and error go to /dev/null (a harness that starts it
        #: run after run); otherwise it inherits ours.
        self.discard_output = discard_output
        #: After a stop, how long the tracer polls for the next one before it sleeps (see POLL_STOPS_NS).
        self.poll_ns = poll_ns
        #: Called with (pid, threads) once tracing has begun (-p: every thread is held).
        self.on_start = on_start
        #: ``-p PID``: trace a running process (its threads seized as they are) instead of starting one.
        self.attach_pid = attach_pid
        #: How a stop is resumed by default: with PTRACE_SYSCALL when attached (there is no filter: every
        #: system call stops at its entry and its exit, as under strace -p).
        self._cont = lib.PTRACE_SYSCALL if attach_pid is not None else lib.PTRACE_CONT
        self._in_syscall: set[int] = set()
        self.env = dict(os.environ) if env is None else env
        self.until_first_run, self.detach, self.timeout_s = until_first_run, detach, timeout_s
        self.clock_choice = clock
        self.on_detach = on_detach
        self.procs: dict[int, _Proc] = {}
        self.tgid: dict[int, int] = {}
        self.alive: set[int] = set()
        self.log = EventLog(limit)
        self.pid = 0
        self.result: TraceResult | None = None
        self._flags: dict[str, int] = {}
        #: The first SIGINT/SIGTERM/SIGHUP sent while run() ran (TraceResult.interrupted_by).
        self._interrupted_by: str | None = None
        self._deadlines: dict[str, int] = {}
        self._exec_seen = False
        self.kclock: KernelClock | None = None
        self._timer: float = 0.0
        # Pairing the stops with the kernel's record, per thread (see _on_kernel).
        #: tid -> (row, fd, request, link kind) of KVM ioctls stopped whose kernel record has not been read.
        self._waiting: dict[int, deque[tuple[int, int, int, int]]] = {}
        self._in_kernel: dict[int, int] = {}
        self._exit_stop: dict[int, int] = {}
        self._closing: dict[int, int] = {}
        self._gone_ns: dict[int, int] = {}
        self._completed_at_stop: set[int] = set()
        self._creating: set[int] = set()   # KVM_CREATE_VCPU rows whose result is not known yet
        self._next_poll = 0
        self._next_check = 0   # when the loop next looks at its deadlines (and the kernel's record)
        #: What the C stop path may do alone (see _refresh_fast), and where it reports a stop.
        self._fast = _fast_table()
        #: The poll window where the host is not busy (set when the loop starts; see _update_polling),
        #: and the CPU pressure since the last look at it.
        self._poll_window = 0
        self._pressure: PressureWindow | None = None
        self._stop = ffi.new("struct minivmm_stop *")
        #: The SRCU grace-period machinery's own record, for the traced threads (``self.tgid``'s keys).
        self.srcu = SrcuTimeline(threads=self.tgid)

    @property
    def events(self) -> EventLog:
        """The recorded ioctls."""
        return self.log

    # --- start ---------------------------------------------------------------------------------------

    def _start(self) -> str:
        if self.attach_pid is not None:
            return self._attach()
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC) if self.discard_output else -1
        try:
            self.pid = spawn(self.path, self.argv, self.env, null)
        finally:
            if null >= 0:
                os.close(null)
        note = "ptrace stops (CLOCK_MONOTONIC read by the tracer at the seccomp stop and the syscall-exit stop)"
        try:
            if self.clock_choice != "ptrace":
                try:
                    self.kclock = KernelClock.open([self.pid])
                    note = ("kernel (syscalls:sys_enter_ioctl/sys_exit_ioctl tracepoints, trace_clock=mono, in a "
                            "private tracefs instance)")
                except KernelClockUnavailable as e:
                    if self.clock_choice == "kernel":
                        raise
                    note += f"; the kernel clock is unavailable: {e}"
            try:
                ptrace(lib.PTRACE_SEIZE, self.pid, 0, OPTIONS, "ptrace(PTRACE_SEIZE)")
            except TraceOSError as e:
                if e.errno in (_errno.EPERM, _errno.EACCES):
                    raise PtraceDenied(_denied_hint(self.pid)) from None
                raise
        except BaseException:
            self._kill_unstarted()
            if self.kclock is not None:
                self.kclock.close()
            raise
        self._add(self.pid, self.pid)
        kill(self.pid, signal.SIGCONT)
        return note

    def _attach(self) -> str:
        """``-p PID``: seize every thread of a running process (PTRACE_SEIZE, no EXITKILL: it outlives us),
        interrupt each once so that its next system call stops, and name its KVM fds from /proc."""
        pid = self.pid = self.attach_pid or 0
        note = "ptrace stops (CLOCK_MONOTONIC read by the tracer at the syscall entry and exit stops)"
        tids = _tasks(pid)
        if not tids:
            raise AttachError(f"no process {pid}")
        if self.clock_choice != "ptrace":
            try:
                self.kclock = KernelClock.open(tids)
                note = ("kernel (syscalls:sys_enter_ioctl/sys_exit_ioctl tracepoints, trace_clock=mono, in a "
                        "private tracefs instance)")
            except KernelClockUnavailable as e:
                if self.clock_choice == "kernel":
                    raise
                note += f"; the kernel clock is unavailable: {e}"
        self.procs[pid] = _running_process(pid)
        try:
            self._seize_every_thread(pid)
        except BaseException:
            self._detach_all()
            if self.kclock is not None:
                self.kclock.close()
            raise
        self._exec_seen = True
        return note

    def _seize_every_thread(self, pid: int) -> None:
        """PTRACE_SEIZE each thread of ``pid``, threads started meanwhile too, and interrupt each once."""
        seized: set[int] = set()
        while new := [t for t in _tasks(pid) if t not in seized]:
            for tid in new:
                seized.add(tid)
                try:
                    ptrace(lib.PTRACE_SEIZE, tid, 0, ATTACH_OPTIONS, "ptrace(PTRACE_SEIZE)")
                except TraceOSError as e:
                    if e.errno == _errno.ESRCH:
                        continue  # the thread ended
                    if e.errno in (_errno.EPERM, _errno.EACCES):
                        raise PtraceDenied(_denied_hint(tid)) from None
                    raise
                self._add(tid, pid)
                ptrace(lib.PTRACE_INTERRUPT, tid, 0, 0, "ptrace(PTRACE_INTERRUPT)")

    def _detach_all(self) -> None:
        """Let go of every thread we hold, leaving the process running as before (``-p``): each is
        brought to a stop (PTRACE_INTERRUPT) and detached there, with the signal it was about to get."""
        pending = set(self.alive)
        for tid in pending:
            try:
                ptrace(lib.PTRACE_INTERRUPT, tid, 0, 0, "ptrace(PTRACE_INTERRUPT)")
            except TraceOSError:
                pass
        deadline = time.monotonic() + 5
        while pending and time.monotonic() < deadline:
            got = _wait_any()
            if got is None:
                break
            tid, status = got
            if not tid:
                continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                pending.discard(tid)
                self.alive.discard(tid)
                continue
            sig = os.WSTOPSIG(status)
            event = (status >> 16) & 0xFF
            deliver = sig if not event and sig != (signal.SIGTRAP | 0x80) else 0
            if lib.minivmm_ptrace(lib.PTRACE_DETACH, tid, ffi.NULL, _SIGNALS[deliver]) == 0 or tid in pending:
                pending.discard(tid)
                self.alive.discard(tid)

    def _kill_unstarted(self) -> None:
        """The child is stopped before its exec: kill and reap it, leaving nothing behind."""
        try:
            kill(self.pid, signal.SIGKILL)
            waitpid(self.pid, 0)
        except TraceOSError:
            pass
        exec_failure(self.pid)

    def _add(self, tid: int, tgid: int, fds: ProcessFds | None = None) -> None:
        self.alive.add(tid)
        self.tgid[tid] = tgid
        if tgid not in self.procs:
            self.procs[tgid] = _Proc(tgid, fds)
            self._clear_fast()  # it knows none of its fds yet

    # --- what the C stop path may do alone ---------------------------------------------------------------

    def _clear_fast(self) -> None:
        """Every fd back to the Python path (a process was added, or exec'd)."""
        ffi.memmove(self._fast.link_known, bytes(_FAST_FDS), _FAST_FDS)
        ffi.memmove(self._fast.run_done, bytes(_FAST_FDS), _FAST_FDS)

    def _kvm_procs(self) -> list[_Proc]:
        """The live processes that have made a KVM ioctl."""
        return [p for tgid, p in self.procs.items() if p.uses_kvm and tgid not in self._gone_ns]

    def _refresh_fast(self, fd: int) -> None:
        """After a change to what a process knows of ``fd``: may the C stop path take its KVM ioctls
        alone (without reading its /proc link; a later KVM_RUN, only counted)? Only where that holds in
        every live process that uses KVM (the C path does not know which process a thread belongs to),
        and never under ``-p`` (every stop there is a syscall stop, resumed with PTRACE_SYSCALL and
        paired with its exit by the tracer)."""
        if not 0 <= fd < _FAST_FDS or self.attach_pid is not None:
            return
        procs = self._kvm_procs()
        self._fast.link_known[fd] = all(fd in p.links for p in procs)
        self._fast.run_done[fd] = all(fd in p.run_done for p in procs)

    def _refresh_all(self) -> None:
        """Every fd's bits anew (a process has made its first KVM ioctl)."""
        self._clear_fast()
        procs = self._kvm_procs()
        if not procs or self.attach_pid is not None:
            return
        for bits, known in ((self._fast.link_known, set.intersection(*(set(p.links) for p in procs))),
                            (self._fast.run_done, set.intersection(*(p.run_done for p in procs)))):
            for fd in known:
                if 0 <= fd < _FAST_FDS:
                    bits[fd] = 1

    # --- the loop ------------------------------------------------------------------------------------

    def run(self) -> TraceResult:
        """Trace until a stop condition; returns the result (the tracee is gone, or detached)."""
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)}

        def flag(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            self._flags[name] = self._flags.get(name, 0) + 1
            if signum != signal.SIGALRM and self._interrupted_by is None:
                self._interrupted_by = name

        for s in old:
            signal.signal(s, flag)
        try:
            note = self._start()
            if self.on_start is not None:
                self.on_start(self.pid, len(self.alive))
            start = time.monotonic_ns()
            if self.timeout_s is not None:
                self._deadlines["timeout"] = start + int(self.timeout_s * 1e9)
            self.result = TraceResult(self.argv, self.pid, self.log, StopReason.EXITED,
                                      Clock.KERNEL if self.kclock else Clock.PTRACE, note,
                                      attached=self.attach_pid is not None)
            self.result.teardown_recorded = bool(self.kclock and self.kclock.teardown_events)
            self._loop()
            if not self._exec_seen:
                failure = exec_failure(self.pid)
                if failure is not None:
                    raise failure
            if self.kclock is not None:
                self._on_kernel(self.kclock.finish())
                self.result.overruns = self.kclock.overruns
                self.srcu.feed(self.kclock.srcu_records)
                self.result.srcu = self.srcu if self.kclock.srcu is not None else None
                self.result.srcu_note = self.kclock.srcu_note
                self.kclock = None
            self._finish_teardown()
            if self.result.detached and self.on_detach is not None:
                self.on_detach(self.result)
                self._service()
            return self.result
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for s, h in old.items():
                signal.signal(s, h)
            if self.result is not None:  # after the handlers are back: a later signal is the caller's own
                self.result.interrupted_by = self._interrupted_by
            if self.kclock is not None:
                self.kclock.close()
            self._reap_all()

    def _arm_timer(self) -> None:
        """A periodic SIGALRM while a deadline is pending or the kernel's record is read as we go (it
        interrupts waitpid, so the deadline is checked even when the tracee stays quiet); changed only
        when the period changes."""
        if self.kclock is not None:
            period = POLL_FIRST_RUN_NS / 1e9 if self._awaiting_first_runs() else _TIMER_TICK_S
        else:  # while polling, the host's load is looked at again each tick (_update_polling)
            period = _TIMER_TICK_S if self._deadlines or self._poll_window else 0.0
        if period != self._timer:
            signal.setitimer(signal.ITIMER_REAL, period, period)
            self._timer = period

    def _loop(self) -> None:
        result = self.result
        assert result is not None
        # The hot path: a KVM ioctl's seccomp stop goes straight to _on_seccomp; the flags and deadlines
        # are looked at only when a signal came or one is due.
        stop, fast, wait = self._stop, self._fast, lib.minivmm_trace_wait
        fast.one_stop = self.kclock is not None and self.attach_pid is None
        fast.attached = self.attach_pid is not None
        self._poll_window = fast.poll_ns = poll_window(self.poll_ns)
        self._update_polling()
        while self.alive:
            if self._flags or time.monotonic_ns() >= self._next_check:
                self._check_flags_and_deadlines()
                if not self.alive or result.detached:
                    break
                self._arm_timer()  # after the check: a deadline it has just set must wake the wait below
            tid = wait(stop, fast)
            if tid < 0:
                err = ffi.errno
                if err == _errno.EINTR:
                    continue
                if err == _errno.ECHILD:
                    self.alive.clear()
                    break
                raise TraceOSError("waitpid", err)
            result.stops += 1
            if stop.seccomp:
                self._on_seccomp(stop)
            elif stop.exited:
                self._on_syscall_exit(tid, stop.now_ns, stop.ret)
            elif not stop.passed:
                self._handle(tid, stop.status, stop.now_ns)

    def _deadline(self, name: str, at: int, keep: bool = False) -> None:
        """Set deadline ``name`` (``keep``: unless it is set already) and make sure the loop wakes for it."""
        if keep and name in self._deadlines:
            return
        self._deadlines[name] = at
        self._next_check = min(self._next_check, at)
        self._arm_timer()

    def _update_polling(self) -> None:
        """Poll for stops only while every task that wants a CPU has one: no more runnable tasks than
        CPUs (counting the program as one at the start, where it is stopped), and CPU pressure (PSI
        "some") over the time since the last look, or over the last ten seconds at the first, at most
        BUSY_PRESSURE_PCT. Otherwise a poll's yield hands the tracer's CPU to another task, and the
        tracer, runnable rather than woken, takes the program's next stop only when that task's time
        slice ends (milliseconds); a tracer asleep in waitpid is woken and run at once."""
        if not self._poll_window:
            return
        first = self._pressure is None
        running = runnable_tasks()
        busy = running is not None and running + first > len(os.sched_getaffinity(0))
        pct = None
        if self._pressure is None:
            self._pressure = PressureWindow.start()
        else:
            pct, self._pressure = self._pressure.lap()
        busy = busy or (busy_now() if pct is None else pct > BUSY_PRESSURE_PCT)
        self._fast.poll_ns = 0 if busy else self._poll_window

    def _check_flags_and_deadlines(self) -> None:
        assert self.result is not None
        self._update_polling()
        now = time.monotonic_ns()
        if self.kclock is not None and now >= self._next_poll:
            # Read the kernel's buffers often (cheap); decode only when a decision waits on the record or
            # the backlog grows (decoding competes with the tracee for the CPU).
            awaiting = self._awaiting_first_runs()
            self.srcu.feed(self.kclock.srcu_poll(over=DECODE_BACKLOG))
            if self.kclock.read() > DECODE_BACKLOG or awaiting:
                self._on_kernel(self.kclock.poll())
                self._check_first_runs(now)
            self._next_poll = now + (POLL_FIRST_RUN_NS if awaiting else POLL_NS)
        flags, self._flags = self._flags, {}
        if flags.get("SIGINT"):
            if self.result.stop_reason is StopReason.EXITED:
                self.result.stop_reason = StopReason.INTERRUPTED
            if "interrupt" in self._deadlines or flags["SIGINT"] > 1 or self.attach_pid is not None:
                self._end_tracee()  # a second Ctrl-C: no more grace
            self._deadlines.setdefault("interrupt", now + INTERRUPT_GRACE_NS)
        terms = flags.get("SIGTERM", 0) + flags.get("SIGHUP", 0)
        if terms:
            if self.result.stop_reason is StopReason.EXITED:
                self.result.stop_reason = StopReason.TERMINATED
            if "kill" in self._deadlines or terms > 1:
                self._deadlines["kill"] = now  # told twice: SIGKILL now
            self._end_tracee()
        d = self._deadlines
        if "timeout" in d and now >= d["timeout"]:
            del d["timeout"]
            if self.result.stop_reason is StopReason.EXITED:
                self.result.stop_reason = StopReason.TIMEOUT
            self._end_tracee()
        if "interrupt" in d and now >= d["interrupt"]:
            del d["interrupt"]
            self._end_tracee()
        if "first_run" in d and now >= d["first_run"]:
            del d["first_run"]
            self._first_run_reached()
        if "kill" in d and now >= d["kill"]:
            del d["kill"]
            self.result.killed_after_grace = True
            self._signal_tracee(signal.SIGKILL)
        self._next_check = min([*d.values(), *([self._next_poll] if self.kclock is not None else [])], default=_NEVER)

    def _signal_tracee(self, sig: int) -> None:
        if self.attach_pid is not None:
            return  # a process we attached to is never ours to signal
        for tgid in {self.tgid[t] for t in self.alive}:
            try:
                kill(tgid, sig)
            except TraceOSError:
                pass

    def _end_tracee(self) -> None:
        """SIGTERM now, SIGKILL if still alive after TERM_GRACE_NS; an attached process is let go instead."""
        assert self.result is not None
        if not self.alive or self.result.detached:
            return
        if self.attach_pid is not None:
            self._detach_all()
            self.result.detached = True
            return
        self.result.ended_by_tracer = True
        if "kill" not in self._deadlines:
            self._signal_tracee(signal.SIGTERM)
            self._deadline("kill", time.monotonic_ns() + TERM_GRACE_NS)

    # --- stops ---------------------------------------------------------------------------------------

    def _resume(self, tid: int, request: int | None = None, sig: int = 0) -> None:
        # The hot path (every stop ends here): the compiled call directly, errors through the choke point.
        if lib.minivmm_ptrace(self._cont if request is None else request, tid, ffi.NULL, _SIGNALS[sig]) < 0:
            try:
                check_errno("ptrace(resume)")
            except TraceOSError as e:
                if e.errno != _errno.ESRCH:  # killed meanwhile (SIGKILL, exit_group): its exit is reported
                    raise

    # The tracer's per-stop path: each waitpid status is classified in one frame (a stop costs the traced
    # VMM its time), so it stays above the complexity limit.
    def _handle(self, tid: int, status: int, now: int) -> None:  # noqa: C901
        assert self.result is not None
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self.alive.discard(tid)
            self._exit_stop.pop(tid, None)
            tgid = self.tgid.get(tid, tid)
            if tid == tgid:
                self._gone_ns[tgid] = now
            if tid == self.pid:
                if os.WIFEXITED(status):
                    self.result.exit_code = os.WEXITSTATUS(status)
                else:
                    self.result.exit_signal = os.WTERMSIG(status)
            return
        if not os.WIFSTOPPED(status):
            return
        if tid not in self.tgid:
            self._add(tid, _tgid_of(tid))
        sig = os.WSTOPSIG(status)
        event = (status >> 16) & 0xFF
        if event == lib.PTRACE_EVENT_SECCOMP:
            self._take_stop(tid, now)
        elif sig == (signal.SIGTRAP | 0x80):
            if self.attach_pid is not None:
                self._on_attached_syscall(tid, now)
            else:
                self._on_syscall_exit(tid, now)
        elif event in (lib.PTRACE_EVENT_FORK, lib.PTRACE_EVENT_VFORK, lib.PTRACE_EVENT_CLONE):
            child = event_message(tid)
            parent = self.procs[self.tgid[tid]]
            if event == lib.PTRACE_EVENT_CLONE and _tgid_of(child) == self.tgid[tid]:
                self._add(child, self.tgid[tid])
            else:
                self._add(child, child, parent.fds.copy())
                self.result.forks.append((self.tgid[tid], child))
            self._resume(tid)
        elif event == lib.PTRACE_EVENT_EXEC:
            former = event_message(tid)
            if former != tid:  # a non-leader thread exec'd: it now has the leader's tid
                self.alive.discard(former)
            tgid = self.tgid[tid]
            if tgid == self.pid and not self._exec_seen:
                self._exec_seen = True
                exec_failure(self.pid)  # closes the spawn pipe (it is at EOF: the exec succeeded)
            else:
                self.result.execs.append((tgid, _exe(tid)))
            proc = self.procs[tgid]
            proc.fds.executed()
            proc.links.clear()
            for fd in list(proc.vcpu_fds):
                proc.forget_vcpu(fd)
            self._clear_fast()
            self._resume(tid)
        elif event == lib.PTRACE_EVENT_STOP:
            if sig in _STOP_SIGNALS:
                self._resume(tid, lib.PTRACE_LISTEN)  # group-stop: stay stopped, as without a tracer
            else:
                self._resume(tid)  # a new tracee's first stop, or our PTRACE_INTERRUPT
        else:
            # Under PTRACE_SEIZE a plain stop is a signal-delivery-stop (group-stops are
            # PTRACE_EVENT_STOP): deliver the signal, as the kernel would have without us. The SIGCONT
            # that started the child is ours and not shown.
            if not (sig == signal.SIGCONT and tid == self.pid and not self._exec_seen):
                self.result.signals.append((tid, sig))
            self._resume(tid, None, sig)

    def _take_stop(self, tid: int, now: int) -> None:
        """A KVM ioctl's stop that the C path did not take (a syscall stop under ``-p``, or a seccomp stop
        whose registers it could not read): read it now, resuming nothing."""
        stop = self._stop
        if lib.minivmm_trace_stop(tid, stop, _READ_ONLY) != 0:
            if stop.error == _errno.ESRCH:
                return  # killed meanwhile (SIGKILL, exit_group): its exit is reported
            raise TraceOSError("ptrace(PTRACE_GETREGS)", stop.error)
        stop.now_ns = now
        self._on_seccomp(stop)

    def _on_seccomp(self, stop: Any) -> None:
        """A KVM ioctl is about to enter the kernel: take what only this moment can tell (the struct it
        points to, what the fd is), let it go, then note it (the tracee runs meanwhile). The C stop path
        has read the registers and the struct, and has resumed the tracee already where
        ``self._fast`` allowed it (``stop.resumed``)."""
        assert self.result is not None
        tid, now, compat, request, arg = stop.tid, stop.now_ns, bool(stop.compat), stop.request, stop.arg
        fd = stop.fd
        if stop.error:
            raise TraceOSError("ptrace(PTRACE_CONT)", stop.error)
        if stop.later_run:
            self.result.later_kvm_runs += 1
            return
        if tid not in self.tgid:
            self._add(tid, _tgid_of(tid))
        tgid = self.tgid[tid]
        proc = self.procs[tgid]
        if not proc.uses_kvm:
            proc.uses_kvm = True
            self._refresh_all()
        first_run = request == _KVM_RUN
        if first_run and fd in proc.run_done:
            self.result.later_kvm_runs += 1
            self._resume(tid)
            self._refresh_fast(fd)  # another process had held it back: its next may end in C again
            return
        raw = _stop_struct(stop)
        link = self._link_of(proc, stop)
        # With the kernel clock, one stop: its record gives the duration and the result, and the fd's
        # role follows in the kernel's order (_on_kernel). Only a vCPU's KVM_RUN until its first returns
        # is also stopped at its exit (one more stop per vCPU): whether it returned an exit decides
        # --until first-run, and which later KVM_RUNs are not recorded, at once.
        # A 32-bit call (i386, x32) is not reported by the syscall tracepoints: its exit stop is its clock.
        exit_stop = first_run or compat or self.kclock is None or self.attach_pid is not None
        if not stop.resumed:
            self._resume(tid, lib.PTRACE_SYSCALL if exit_stop else lib.PTRACE_CONT)
        if first_run:
            # Until a KVM_RUN of this vCPU has returned an exit (QEMU's first ones often return EINTR:
            # it kicks its vCPUs while starting), each one is recorded as its first.
            proc.run_started.add(fd)
            if self.until_first_run and self._all_vcpus_started():
                self._deadline("first_run", now + FIRST_RUN_GRACE_NS, keep=True)
        row = self.log.add(tgid, tid, fd - (1 << 32) if fd >= 1 << 31 else fd, request, arg, raw, now, first_run)
        if row < 0:  # past the log's limit: counted only
            return
        if request == _CREATE_VCPU and self.until_first_run:
            self._creating.add(row)
        if exit_stop:
            self._exit_stop[tid] = row
        if compat:
            self.result.compat_calls += 1
        if self.kclock is not None and not compat:
            self._waiting.setdefault(tid, deque()).append((row, fd, request, link))
        else:
            self.log.set_role(row, proc.fds.role(fd, link))

    def _link_of(self, proc: _Proc, stop: Any) -> int:
        """What the stopped call's fd is (:func:`kind_of_link`), kept per process with the kernel clock,
        whose record of close() keeps the cache true."""
        fd = stop.fd
        link = proc.links.get(fd)
        if link is None:
            link = _stop_link(stop)
            if self.kclock is not None:
                proc.links[fd] = link
                self._refresh_fast(fd)
        elif stop.link_len != lib.MINIVMM_LINK_UNREAD:
            self._refresh_fast(fd)  # C read a link this process knew: another process had held it back
        return link

    def _on_attached_syscall(self, tid: int, now: int) -> None:
        """``-p``: every system call stops at its entry and its exit. An entry of a KVM ioctl is taken as a
        seccomp stop is; its exit completes it (the kernel's record, when there is one, adds its clock)."""
        if tid in self._in_syscall:
            self._in_syscall.discard(tid)
            self._on_syscall_exit(tid, now)
            return
        regs = getregs(tid)
        if _signed(int(regs.rax)) != -_errno.ENOSYS:
            self._on_syscall_exit(tid, now)  # an exit after all (we lost count): complete what is pending
            return
        self._in_syscall.add(tid)
        nr = int(regs.orig_rax)
        if nr in IOCTL_NUMBERS:
            request = int(regs.rcx if nr == _NR_IOCTL_I386 else regs.rsi) & 0xFFFFFFFF
            if (request >> 8) & 0xFF == KVMIO:
                self._take_stop(tid, now)
                return
        self._resume(tid)

    def _on_syscall_exit(self, tid: int, now: int, resumed_with: int | None = None) -> None:
        """A KVM ioctl's exit stop: its result and the tracer's clock complete it. ``resumed_with``: the C
        path has read the result and resumed the tracee already."""
        row = self._exit_stop.pop(tid, None)
        if row is not None:
            if resumed_with is None:
                regs = getregs(tid)
                ret = _signed32(int(regs.rax)) if int(regs.orig_rax) == _NR_IOCTL_I386 else _signed(int(regs.rax))
            else:
                ret = resumed_with
            self.log.set_stop_exit(row, now, ret)
            if self.kclock is not None:
                self._completed_at_stop.add(row)
            self._complete(row, ret)
            if self.kclock is not None and self._awaiting_first_runs():
                # A first run ended: what the kernel recorded before it (the vCPUs created) decides now.
                self._on_kernel(self.kclock.poll(now=True))
                self._check_first_runs(now)
        if resumed_with is None:
            self._resume(tid)

    # --- completion, in the kernel's order -------------------------------------------------------------

    def _on_kernel(self, records: list[Record]) -> None:
        """Pair the kernel's record with the stops, per thread (a thread makes one system call at a time),
        and complete each call in the order the kernel saw them."""
        for rec in records:
            tid, event = rec.pid, rec.event
            if event == kclock.ENTER:
                self._kernel_enter(tid, rec.fields[0] & 0xFFFFFFFF, rec.fields[1] & 0xFFFFFFFF, rec.ts)
            elif event == kclock.EXIT:
                row = self._in_kernel.pop(tid, None)
                if row is not None and row >= 0:
                    ret = rec.fields[0]
                    self.log.set_kernel(row, exit_ns=rec.ts, ret=ret)
                    if row in self._completed_at_stop:
                        self._completed_at_stop.discard(row)
                    else:
                        self._complete(row, ret)
            elif event == kclock.CLOSE:
                self._kernel_close(tid, rec.fields[0] & 0xFFFFFFFF, rec.ts)
            elif event == kclock.CLOSED:
                k = self._closing.pop(tid, -1)
                if k >= 0:
                    call = self.result.teardown[k]  # type: ignore[union-attr]
                    call.exit_ns, call.ret = rec.ts, rec.fields[0]
            elif event == kclock.EXIT_GROUP:
                tgid = self.tgid.get(tid, tid)
                if tgid in self.procs and (self.procs[tgid].fds.roles or self.procs[tgid].fds.vm_count):
                    self.result.teardown.append(  # type: ignore[union-attr]
                        TeardownCall("exit_group", tgid, tid, None, None, rec.ts, ret=rec.fields[0]))

    def _kernel_enter(self, tid: int, fd: int, request: int, ts: int) -> None:
        queue = self._waiting.get(tid)
        found = None
        if queue:
            for k, (_row, w_fd, w_request, _link) in enumerate(queue):
                if w_fd == fd and w_request == request:
                    found = k
                    break
        if found is None:
            self._in_kernel[tid] = _NOT_IN_KERNEL
            return
        assert queue is not None
        proc = self.procs[self.tgid[tid]]
        for _ in range(found + 1):
            # Stops before the matching one never reached the kernel's record (lost, or the call never
            # entered): they keep what the stop saw.
            row, w_fd, _request, link = queue.popleft()
            self.log.set_role(row, proc.fds.role(w_fd, link))
        self.log.set_kernel(row, enter_ns=ts)
        self._in_kernel[tid] = row

    def _kernel_close(self, tid: int, fd: int, ts: int) -> None:
        assert self.result is not None
        tgid = self.tgid.get(tid, tid)
        proc = self.procs.get(tgid)
        if proc is not None:
            proc.links.pop(fd, None)
            self._refresh_fast(fd)
        role = proc.fds.closed(fd) if proc is not None else None
        if proc is None or role is None:
            self._closing[tid] = -1
            return
        proc.forget_vcpu(fd)
        self._refresh_fast(fd)
        self.result.teardown.append(TeardownCall("close", tgid, tid, fd, role, ts))
        self._closing[tid] = len(self.result.teardown) - 1

    def _complete(self, row: int, ret: int) -> None:
        """A call's result is known: what it changes in the fds' roles and the vCPUs' first runs."""
        log = self.log
        log.settle()
        request, proc, fd = log.request[row], self.procs[log.pid[row]], log.fd[row]
        self._creating.discard(row)
        if ret >= 0 and request == _CREATE_VM:
            self.result.vms_created[row] = proc.fds.created_vm(ret)  # type: ignore[union-attr]
        elif ret >= 0 and request == _CREATE_VCPU:
            proc.vcpu_fds[ret] = proc.fds.created_vcpu(ret, log.arg[row], log.roles[log.role_id[row]])
        elif request == _KVM_RUN:
            if fd in proc.run_done:
                log.set_first_run(row, False)  # its vCPU's first run had ended before it began
            elif ret >= 0:
                proc.run_done.add(fd)
                self._refresh_fast(fd)
                if self.until_first_run and self._all_vcpus_started() and self._all_first_runs_done():
                    self._first_run_reached()

    def _finish_teardown(self) -> None:
        """An exit_group's end: when the tracer saw its process gone."""
        assert self.result is not None
        for call in self.result.teardown:
            if call.kind == "exit_group" and call.exit_ns is None and call.pid in self._gone_ns:
                call.exit_ns = max(self._gone_ns[call.pid], call.enter_ns)

    def _vcpus(self) -> list[tuple[_Proc, int]]:
        """The live vCPU fds (a closed one, e.g. a probe VM's, does not count; without the kernel's record
        of close(), /proc says which are gone)."""
        out = []
        for p in self.procs.values():
            for fd in list(p.vcpu_fds):
                if self.kclock is None and link_kind(p.tgid, fd) < 0:
                    p.forget_vcpu(fd)
                    continue
                out.append((p, fd))
        return out

    def _all_vcpus_started(self) -> bool:
        """Every live vCPU has entered KVM_RUN (and no KVM_CREATE_VCPU is still to be accounted for)."""
        vcpus = self._vcpus()
        return not self._creating and bool(vcpus) and all(fd in p.run_started for p, fd in vcpus)

    def _check_first_runs(self, now: int) -> None:
        """After new completions from the kernel's record: has --until first-run been reached?"""
        if not self.until_first_run or self.result is None or self.result.stop_reason is not StopReason.EXITED:
            return
        if self._all_vcpus_started():
            if self._all_first_runs_done():
                self._first_run_reached()
            else:
                self._deadline("first_run", now + FIRST_RUN_GRACE_NS, keep=True)

    def _all_first_runs_done(self) -> bool:
        return all(fd in p.run_done for p, fd in self._vcpus())

    def _awaiting_first_runs(self) -> bool:
        return self.until_first_run and (bool(self._creating)
                                         or any(p.run_started - p.run_done for p in self.procs.values()))

    def _first_run_reached(self) -> None:
        assert self.result is not None
        if self.result.stop_reason is not StopReason.EXITED:
            return
        self._deadlines.pop("first_run", None)
        self.result.stop_reason = StopReason.FIRST_RUN
        self.result.unfinished_first_runs = sorted(
            p.vcpu_fds[fd] for p, fd in self._vcpus() if fd not in p.run_done)
        if self.detach:
            self.result.detached = True
        else:
            self._end_tracee()

    # --- detach: the servicer ------------------------------------------------------------------------

    def _service(self) -> None:
        """After --detach: keep resuming the tracee's KVM ioctls until it exits.

        A seccomp filter cannot be removed, and SECCOMP_RET_TRACE with no tracer makes the system call
        fail with ENOSYS, so a VMM left on its own would lose KVM; the tracer therefore stays (in the
        background: the caller has already reported and let the shell go) and only resumes stops.
        SIGTERM ends it the way the VMM would end without it: SIGTERM to the VMM, SIGKILL after
        TERM_GRACE_NS, then the servicer exits (it ignores SIGINT and SIGHUP: the terminal is not its)."""
        self._deadlines.clear()
        self._flags.clear()
        for s in (signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        self._timer = -1.0
        while self.alive:
            now = time.monotonic_ns()
            if self._flags.pop("SIGTERM", 0):
                if "kill" in self._deadlines:
                    self._deadlines["kill"] = now
                else:
                    self._signal_tracee(signal.SIGTERM)
                    self._deadlines["kill"] = now + TERM_GRACE_NS
            if "kill" in self._deadlines and now >= self._deadlines["kill"]:
                self._signal_tracee(signal.SIGKILL)
            period = _TIMER_TICK_S if self._deadlines else 0.0
            if period != self._timer:
                signal.setitimer(signal.ITIMER_REAL, period, period)
                self._timer = period
            got = _wait_any()
            if got is None:
                break
            tid, status = got
            if not tid:
                continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self.alive.discard(tid)
                continue
            sig, event = os.WSTOPSIG(status), (status >> 16) & 0xFF
            if event == lib.PTRACE_EVENT_STOP and sig in _STOP_SIGNALS:
                self._resume(tid, lib.PTRACE_LISTEN)
            elif event or sig == (signal.SIGTRAP | 0x80):
                if event in (lib.PTRACE_EVENT_FORK, lib.PTRACE_EVENT_VFORK, lib.PTRACE_EVENT_CLONE):
                    self.alive.add(event_message(tid))
                self._resume(tid)
            else:
                self._resume(tid, lib.PTRACE_CONT, sig)

    def _reap_all(self) -> None:
        """Never leave a tracee stopped or orphaned: whatever is still traced here is killed and reaped
        (only on an error path; every normal path ends with the tracees gone or serviced). An attached
        process is let go instead."""
        if not self.alive:
            return
        if self.attach_pid is not None:
            self._detach_all()
            return
        for tid in list(self.alive):
            try:
                kill(tid, signal.SIGKILL)
            except TraceOSError:
                pass
        deadline = time.monotonic() + 5
        while self.alive and time.monotonic() < deadline:
            try:
                tid, status = waitpid(-1, WALL)
            except TraceOSError:
                break
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self.alive.discard(tid)


def _wait_any() -> tuple[int, int] | None:
    """The next stop or end of any tracee: (tid, status); (0, 0) when a signal interrupted the wait (the
    caller looks at its flags); None when there is nothing left to wait for."""
    try:
        return waitpid(-1, WALL)
    except TraceOSError as e:
        return (0, 0) if e.errno == _errno.EINTR else None


def _exe(tid: int) -> str:
    try:
        return os.readlink(f"/proc/{tid}/exe")
    except OSError:
        return "?"


def _tracer_of(pid: int) -> tuple[int, str] | None:
    """The pid and name of the process already tracing ``pid`` (TracerPid in /proc), if one is."""
    try:
        with open(f"/proc/{pid}/status") as f:
            tracer = next((int(line.split()[1]) for line in f if line.startswith("TracerPid:")), 0)
    except (OSError, ValueError):
        return None
    if tracer <= 0 or tracer == os.getpid():
        return None
    try:
        with open(f"/proc/{tracer}/comm") as f:
            name = f.read().strip()
    except OSError:
        name = "?"
    return tracer, name


def _denied_hint(pid: int = 0) -> str:
    """Why PTRACE_SEIZE of ``pid`` was refused, as far as this machine tells, and how to allow it."""
    other = _tracer_of(pid) if pid else None
    if other is not None:
        return (f"pid {pid} is already being traced by pid {other[0]} ({other[1]}), and a process has one "
                "tracer at a time: run minivmm trace outside that tracer (strace -f, gdb, another minivmm trace)")
    scope = None
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = f.read().strip()
    except OSError:
        pass
    if scope == "3":
        return ("ptrace is disabled by Yama (kernel.yama.ptrace_scope=3, which only a reboot resets): "
                "minivmm trace cannot work on this host")
    if scope in ("1", "2"):
        return (f"ptrace is restricted by Yama (kernel.yama.ptrace_scope={scope}); allow it with "
                "'sysctl kernel.yama.ptrace_scope=0' or run minivmm trace as root (CAP_SYS_PTRACE)")
    return ("ptrace was refused (in a container, the runtime's seccomp profile or a missing CAP_SYS_PTRACE "
            "is the usual cause: run it with --cap-add=SYS_PTRACE, or --security-opt seccomp=unconfined)")


def spawn_failure_message(e: SpawnError, command: str) -> str:
    """One line for a child that could not reach its exec."""
    if e.stage == "execve":
        return f"cannot execute {command!r}: {e.strerror}"
    return f"cannot start {command!r} under the tracer: {e.stage}: {e.strerror}"
