"""The tracer: run COMMAND under ptrace with a seccomp filter that stops it only on KVM ioctls.

How a KVM ioctl is seen: the filter (:func:`minivmm.trace.syscalls.seccomp_kvm_filter`) returns
SECCOMP_RET_TRACE for it, the tracee stops (PTRACE_EVENT_SECCOMP), the tracer reads the registers and
the argument struct, resumes it with PTRACE_SYSCALL, and reads the return value at the syscall-exit
stop, then resumes with PTRACE_CONT. Every other system call runs without stopping. Threads and
children are followed (PTRACE_O_TRACECLONE/FORK/VFORK, the filter is inherited); PTRACE_O_EXITKILL
kills the tracees if the tracer dies, so a tracee is never left stopped or orphaned.

Signals pass through: a signal-delivery-stop is resumed with the same signal, a group-stop is kept
(PTRACE_LISTEN), so the tracee behaves as it does without the tracer (see
``man 2 ptrace``, "Signal-delivery-stop" and "Group-stop").

The stop conditions (:class:`StopReason`): every tracee has exited; ``until_first_run`` (every created
vCPU has entered KVM_RUN and its first KVM_RUN returned, or did not return within
``FIRST_RUN_GRACE_NS``), then SIGTERM to the VMM or, with ``detach``, hand-over to a background
servicer; the timeout; SIGINT/SIGTERM to the tracer.
"""

from __future__ import annotations

import enum
import functools
import errno as _errno
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from minivmm.trace import decode
from minivmm.trace.decode import Decoded, FdRoles
from minivmm.trace.kclock import KernelClock, KernelClockUnavailable, SyscallSpan
from minivmm.trace.syscalls import (SpawnError, TraceOSError, check_errno, event_message, exec_failure, ffi,
                                    getregs, kill, lib, ptrace, spawn, waitpid)

#: After every vCPU has entered KVM_RUN, how long to wait for the first exits before stopping anyway.
FIRST_RUN_GRACE_NS = 200_000_000
#: After SIGTERM (ours), how long the VMM has before SIGKILL.
TERM_GRACE_NS = 5_000_000_000
#: After the user's Ctrl-C (which the tracee usually got from the terminal too), before our SIGTERM.
INTERRUPT_GRACE_NS = 1_000_000_000
_TIMER_TICK_S = 0.1
WALL: int = getattr(lib, "__WALL")  # a dunder name: not written as lib.__WALL inside a class (name mangling)
#: ptrace's data argument for each signal number (0: none), made once.
_SIGNALS = [ffi.cast("void *", n) for n in range(65)]

_STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}


class PtraceDenied(RuntimeError):
    """PTRACE_SEIZE was refused (Yama, a container's seccomp profile, no CAP_SYS_PTRACE); says how to allow it."""


class StopReason(str, enum.Enum):
    """Why tracing ended."""

    EXITED = "exited"
    FIRST_RUN = "first-run"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    TERMINATED = "terminated"


class Clock(str, enum.Enum):
    """Where the durations come from."""

    KERNEL = "kernel"   # syscalls:sys_enter_ioctl/sys_exit_ioctl tracepoints, trace_clock=mono
    PTRACE = "ptrace"   # the tracer's CLOCK_MONOTONIC at the seccomp stop and at the syscall-exit stop


@dataclass
class IoctlEvent:
    """One KVM ioctl of the tracee."""

    index: int
    pid: int
    tid: int
    fd: int
    role: str
    request: int
    name: str
    arg: int
    raw: bytes | None
    stop_enter_ns: int
    stop_exit_ns: int | None = None
    ret: int | None = None
    kernel_enter_ns: int | None = None
    kernel_exit_ns: int | None = None
    first_run: bool = False

    @functools.cached_property
    def decoded(self) -> Decoded:
        """The argument, decoded from the bytes taken at the stop."""
        return decode.decode_raw(self.request, self.arg, self.raw)

    @property
    def enter_ns(self) -> int:
        """The start (kernel timestamp where matched, else the seccomp stop)."""
        return self.kernel_enter_ns if self.kernel_enter_ns is not None else self.stop_enter_ns

    @property
    def duration_ns(self) -> int | None:
        """The duration, from the kernel's timestamps where matched, else from the ptrace stops."""
        if self.kernel_enter_ns is not None and self.kernel_exit_ns is not None:
            return self.kernel_exit_ns - self.kernel_enter_ns
        if self.stop_exit_ns is not None:
            return self.stop_exit_ns - self.stop_enter_ns
        return None

    @property
    def clock(self) -> Clock:
        """Which clock :attr:`duration_ns` came from."""
        return Clock.KERNEL if self.kernel_exit_ns is not None else Clock.PTRACE

    @property
    def errno(self) -> int:
        """The errno of a failed call (0 on success or while unfinished)."""
        return -self.ret if self.ret is not None and self.ret < 0 else 0

    @property
    def vcpu_id(self) -> int | None:
        """For KVM_CREATE_VCPU, the id asked for."""
        return self.arg if self.request == decode.KVM_CREATE_VCPU else None


@dataclass
class TraceResult:
    """What the tracer saw, and how it ended."""

    argv: list[str]
    pid: int
    events: list[IoctlEvent]
    stop_reason: StopReason
    clock: Clock
    clock_note: str
    exit_code: int | None = None          # the tracee's exit code, if it exited
    exit_signal: int | None = None        # the signal that killed it, if one did
    detached: bool = False
    ended_by_tracer: bool = False         # we sent the SIGTERM/SIGKILL that ended it
    later_kvm_runs: int = 0               # KVM_RUN calls after each vCPU's first (not recorded)
    forks: list[tuple[int, int]] = field(default_factory=list)
    execs: list[tuple[int, str]] = field(default_factory=list)
    signals: list[tuple[int, int]] = field(default_factory=list)   # (tid, signal) passed through
    stops: int = 0                        # ptrace stops handled
    overruns: int = 0
    unfinished_first_runs: list[str] = field(default_factory=list)


class _Proc:
    """Per traced process (thread group)."""

    def __init__(self, tgid: int) -> None:
        self.tgid = tgid
        self.fds = FdRoles(tgid)
        self.first_run_started: set[str] = set()
        self.first_run_done: set[str] = set()
        self.vcpus: list[str] = []


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


OPTIONS = (lib.PTRACE_O_TRACESYSGOOD | lib.PTRACE_O_TRACESECCOMP | lib.PTRACE_O_TRACECLONE
           | lib.PTRACE_O_TRACEFORK | lib.PTRACE_O_TRACEVFORK | lib.PTRACE_O_TRACEEXEC | lib.PTRACE_O_EXITKILL)


class Tracer:
    """Start ``argv`` (``path`` resolved by the caller) and record its KVM ioctls. One use."""

    def __init__(self, path: str, argv: list[str], env: dict[str, str] | None = None, *,
                 until_first_run: bool = False, detach: bool = False, timeout_s: float | None = None,
                 clock: str = "auto", on_detach: Any = None) -> None:
        self.path, self.argv = path, argv
        self.env = dict(os.environ) if env is None else env
        self.until_first_run, self.detach, self.timeout_s = until_first_run, detach, timeout_s
        self.clock_choice = clock
        self.on_detach = on_detach
        self.procs: dict[int, _Proc] = {}
        self.tgid: dict[int, int] = {}
        self.alive: set[int] = set()
        self.pending: dict[int, IoctlEvent] = {}
        self.events: list[IoctlEvent] = []
        self.pid = 0
        self.result: TraceResult | None = None
        self._flags: dict[str, int] = {}
        self._deadlines: dict[str, int] = {}
        self._exec_seen = False
        self.kernel_clock = False
        self._timer_armed = False

    # --- start ---------------------------------------------------------------------------------------

    def _start(self) -> tuple[KernelClock | None, str]:
        self.pid = spawn(self.path, self.argv, self.env)
        kclock: KernelClock | None = None
        note = "ptrace stops (CLOCK_MONOTONIC read by the tracer at the seccomp stop and the syscall-exit stop)"
        try:
            if self.clock_choice != "ptrace":
                try:
                    kclock = KernelClock.open(self.pid)
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
                    raise PtraceDenied(_denied_hint()) from None
                raise
        except BaseException:
            self._kill_unstarted()
            if kclock is not None:
                kclock.close()
            raise
        self._add(self.pid, self.pid)
        kill(self.pid, signal.SIGCONT)
        return kclock, note

    def _kill_unstarted(self) -> None:
        """The child is stopped before its exec: kill and reap it, leaving nothing behind."""
        try:
            kill(self.pid, signal.SIGKILL)
            waitpid(self.pid, 0)
        except TraceOSError:
            pass
        exec_failure(self.pid)

    def _add(self, tid: int, tgid: int) -> None:
        self.alive.add(tid)
        self.tgid[tid] = tgid
        if tgid not in self.procs:
            self.procs[tgid] = _Proc(tgid)

    # --- the loop ------------------------------------------------------------------------------------

    def run(self) -> TraceResult:
        """Trace until a stop condition; returns the result (the tracee is gone, or detached)."""
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)}

        def flag(signum: int, _frame: Any) -> None:
            self._flags[signal.Signals(signum).name] = self._flags.get(signal.Signals(signum).name, 0) + 1

        for s in old:
            signal.signal(s, flag)
        kclock: KernelClock | None = None
        try:
            kclock, note = self._start()
            start = time.monotonic_ns()
            if self.timeout_s is not None:
                self._deadlines["timeout"] = start + int(self.timeout_s * 1e9)
            self.kernel_clock = kclock is not None
            self.result = TraceResult(self.argv, self.pid, self.events, StopReason.EXITED,
                                      Clock.KERNEL if kclock else Clock.PTRACE, note)
            self._loop()
            if not self._exec_seen:
                failure = exec_failure(self.pid)
                if failure is not None:
                    raise failure
            if kclock is not None:
                spans = kclock.collect()
                self.result.overruns = kclock.overruns
                _attach_kernel_times(self.events, spans)
            if self.result.detached and self.on_detach is not None:
                self.on_detach(self.result)
                self._service()
            return self.result
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for s, h in old.items():
                signal.signal(s, h)
            if kclock is not None:
                kclock.close()
            self._reap_all()

    def _arm_timer(self) -> None:
        """A periodic SIGALRM while a deadline is pending (it interrupts waitpid, so the deadline is
        checked even when the tracee stays quiet); changed only when that state changes."""
        armed = bool(self._deadlines)
        if armed != self._timer_armed:
            signal.setitimer(signal.ITIMER_REAL, *((_TIMER_TICK_S, _TIMER_TICK_S) if armed else (0, 0)))
            self._timer_armed = armed

    def _loop(self) -> None:
        assert self.result is not None
        while self.alive:
            self._check_flags_and_deadlines()
            if not self.alive or self.result.detached:
                break
            self._arm_timer()  # after the check: a deadline it has just set must wake the wait below
            try:
                tid, status = waitpid(-1, WALL)
            except TraceOSError as e:
                if e.errno == _errno.EINTR:
                    continue
                if e.errno == _errno.ECHILD:
                    self.alive.clear()
                    break
                raise
            now = time.monotonic_ns()
            self.result.stops += 1
            self._handle(tid, status, now)

    def _check_flags_and_deadlines(self) -> None:
        assert self.result is not None
        now = time.monotonic_ns()
        flags, self._flags = self._flags, {}
        if flags.get("SIGINT"):
            if self.result.stop_reason is StopReason.EXITED:
                self.result.stop_reason = StopReason.INTERRUPTED
            self._deadlines.setdefault("interrupt", now + INTERRUPT_GRACE_NS)
        for name in ("SIGTERM", "SIGHUP"):
            if flags.get(name):
                if self.result.stop_reason is StopReason.EXITED:
                    self.result.stop_reason = StopReason.TERMINATED
                self._signal_tracee(signal.Signals[name])
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
            self._signal_tracee(signal.SIGKILL)

    def _signal_tracee(self, sig: int) -> None:
        for tgid in {self.tgid[t] for t in self.alive}:
            try:
                kill(tgid, sig)
            except TraceOSError:
                pass

    def _end_tracee(self) -> None:
        """SIGTERM now, SIGKILL if still alive after TERM_GRACE_NS."""
        assert self.result is not None
        if "kill" in self._deadlines or not self.alive:
            return
        self.result.ended_by_tracer = True
        self._signal_tracee(signal.SIGTERM)
        self._deadlines["kill"] = time.monotonic_ns() + TERM_GRACE_NS

    # --- stops ---------------------------------------------------------------------------------------

    def _resume(self, tid: int, request: int = lib.PTRACE_CONT, sig: int = 0) -> None:
        # The hot path (every stop ends here): the compiled call directly, errors through the choke point.
        if lib.minivmm_ptrace(request, tid, ffi.NULL, _SIGNALS[sig]) < 0:
            try:
                check_errno("ptrace(resume)")
            except TraceOSError as e:
                if e.errno != _errno.ESRCH:  # killed meanwhile (SIGKILL, exit_group): its exit is reported
                    raise

    def _handle(self, tid: int, status: int, now: int) -> None:
        assert self.result is not None
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self.alive.discard(tid)
            self.pending.pop(tid, None)
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
            self._on_seccomp(tid, now)
        elif sig == (signal.SIGTRAP | 0x80):
            self._on_syscall_exit(tid, now)
        elif event in (lib.PTRACE_EVENT_FORK, lib.PTRACE_EVENT_VFORK, lib.PTRACE_EVENT_CLONE):
            child = event_message(tid)
            if event == lib.PTRACE_EVENT_CLONE and _tgid_of(child) == self.tgid[tid]:
                self._add(child, self.tgid[tid])
            else:
                self._add(child, child)
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
            self.procs[tgid].fds.forget_cloexec()
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
            self._resume(tid, lib.PTRACE_CONT, sig)

    def _on_seccomp(self, tid: int, now: int) -> None:
        assert self.result is not None
        regs = getregs(tid)
        fd = int(regs.rdi) & 0xFFFFFFFF
        fd = fd - (1 << 32) if fd >= 1 << 31 else fd
        request = int(regs.rsi) & 0xFFFFFFFF
        arg = int(regs.rdx)
        tgid = self.tgid[tid]
        proc = self.procs[tgid]
        role = proc.fds.role(fd, tid)
        first_run = False
        if request == decode.KVM_RUN:
            # Until a KVM_RUN of this vCPU has returned an exit (QEMU's first ones often return EINTR:
            # it kicks its vCPUs while starting), each one is recorded as its first.
            if role in proc.first_run_done:
                self.result.later_kvm_runs += 1
                self._resume(tid)
                return
            proc.first_run_started.add(role)
            first_run = True
            if self.until_first_run and self._all_vcpus_started():
                self._deadlines.setdefault("first_run", now + FIRST_RUN_GRACE_NS)
        ev = IoctlEvent(len(self.events), tgid, tid, fd, role, request, decode.request_name(request), arg,
                        decode.capture(tid, request, arg), now, first_run=first_run)
        self.events.append(ev)
        # The syscall-exit stop costs a second round trip through the tracer, inside the call as the
        # tracee sees it. With the kernel clock the return value comes from sys_exit afterwards, so
        # only the calls whose result steers the tracer (new fds, the first KVM_RUN) are stopped at exit.
        if self.kernel_clock and request not in (decode.KVM_CREATE_VM, decode.KVM_CREATE_VCPU) and not first_run:
            self._resume(tid)
            return
        self.pending[tid] = ev
        self._resume(tid, lib.PTRACE_SYSCALL)

    def _on_syscall_exit(self, tid: int, now: int) -> None:
        ev = self.pending.pop(tid, None)
        if ev is not None:
            ev.stop_exit_ns = now
            ev.ret = _signed(int(getregs(tid).rax))
            proc = self.procs[ev.pid]
            if ev.ret >= 0 and ev.request == decode.KVM_CREATE_VM:
                proc.fds.created_vm(ev.ret)
            elif ev.ret >= 0 and ev.request == decode.KVM_CREATE_VCPU:
                role = proc.fds.created_vcpu(ev.ret, ev.arg, ev.role)
                proc.vcpus.append(role)
            elif ev.first_run and ev.ret >= 0:
                proc.first_run_done.add(ev.role)
                if self.until_first_run and self._all_vcpus_started() and self._all_first_runs_done():
                    self._first_run_reached()
        self._resume(tid)

    def _all_vcpus_started(self) -> bool:
        vcpus = [(p, v) for p in self.procs.values() for v in p.vcpus]
        return bool(vcpus) and all(v in p.first_run_started for p, v in vcpus)

    def _all_first_runs_done(self) -> bool:
        return all(v in p.first_run_done for p in self.procs.values() for v in p.vcpus)

    def _first_run_reached(self) -> None:
        assert self.result is not None
        if self.result.stop_reason is not StopReason.EXITED:
            return
        self._deadlines.pop("first_run", None)
        self.result.stop_reason = StopReason.FIRST_RUN
        self.result.unfinished_first_runs = sorted(
            v for p in self.procs.values() for v in p.vcpus if v not in p.first_run_done)
        if self.detach:
            self.result.detached = True
        else:
            self._end_tracee()

    # --- detach: the servicer ------------------------------------------------------------------------

    def _service(self) -> None:
        """After --detach: keep resuming the tracee's KVM ioctls until it exits.

        A seccomp filter cannot be removed, and SECCOMP_RET_TRACE with no tracer makes the system call
        fail with ENOSYS, so a VMM left on its own would lose KVM; the tracer therefore stays (in the
        background: the caller has already reported and let the shell go) and only resumes stops."""
        self._deadlines.clear()
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s in (signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        while self.alive:
            try:
                tid, status = waitpid(-1, WALL)
            except TraceOSError as e:
                if e.errno == _errno.EINTR:
                    continue
                break
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
        (only on an error path; every normal path ends with the tracees gone or serviced)."""
        if not self.alive:
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


def _exe(tid: int) -> str:
    try:
        return os.readlink(f"/proc/{tid}/exe")
    except OSError:
        return "?"


def _attach_kernel_times(events: list[IoctlEvent], spans: dict[int, list[SyscallSpan]]) -> None:
    """Give each event the kernel's enter/exit timestamps of the same call: per thread, in order, the next
    ioctl span with the same fd and request (the spans also hold the thread's other ioctls, and KVM_RUNs
    after the first, which are skipped)."""
    cursor: dict[int, int] = {}
    for ev in events:
        tid_spans = spans.get(ev.tid, [])
        i = cursor.get(ev.tid, 0)
        while i < len(tid_spans):
            s = tid_spans[i]
            i += 1
            if (s.fd & 0xFFFFFFFF) == (ev.fd & 0xFFFFFFFF) and (s.request & 0xFFFFFFFF) == ev.request:
                if s.exit_ns is not None and (ev.ret is None or s.ret == ev.ret):
                    ev.kernel_enter_ns, ev.kernel_exit_ns = s.enter_ns, s.exit_ns
                    if ev.ret is None:
                        ev.ret = s.ret
                break
        cursor[ev.tid] = i


def _denied_hint() -> str:
    """Why PTRACE_SEIZE was refused, as far as this machine tells, and how to allow it."""
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
