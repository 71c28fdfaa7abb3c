"""The traced KVM ioctls, kept compactly: one row per ioctl in typed columns (``array``), the argument
structs' bytes in one buffer; a row is read back as an :class:`IoctlEvent` when it is looked at.

Why columns: a trace that runs ``--until exit`` can hold hundreds of thousands of ioctls (interrupt
injection, dirty-log rounds, the ioctls of a guest's drivers); as objects each costs ~0.5 KB, as a row
~100 bytes. Rows are filled in two stages: at the tracee's stop (thread, fd, request, argument, struct
bytes, stop time) and when the call is complete (kernel timestamps, result, the fd's role), which with
the kernel clock comes later, from the kernel's record.

A log holds at most ``limit`` rows; what comes after is counted by request name, not kept, and the
report says so (:attr:`EventLog.dropped`).
"""

from __future__ import annotations

import enum
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import overload

from minivmm.kvm.uapi import ioctl_name
from minivmm.trace import decode
from minivmm.trace.decode import Decoded

#: Rows kept by default (~100 bytes each): beyond this, ioctls are counted, not kept.
DEFAULT_LIMIT = 1_000_000
_NONE = -(1 << 63)  # "not known" in a signed column
_FIRST_RUN, _HAS_RAW = 1, 2


class Clock(str, enum.Enum):
    """Where the durations come from."""

    KERNEL = "kernel"   # syscalls:sys_enter_ioctl/sys_exit_ioctl tracepoints, trace_clock=mono
    PTRACE = "ptrace"   # the tracer's CLOCK_MONOTONIC at the seccomp stop and at the syscall-exit stop


@dataclass(eq=True)
class IoctlEvent:
    """One KVM ioctl of the tracee (a row of the log, or made directly, e.g. by a test)."""

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

    @property
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


def _opt(value: int) -> int | None:
    return None if value == _NONE else value


class EventLog:
    """Rows of ioctls (see the module docstring); a sequence of :class:`IoctlEvent` to its readers.

    Owned by the tracer's thread: rows are added and completed there only."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self.pid, self.tid, self.fd = array("i"), array("i"), array("i")
        self.request, self.arg = array("Q"), array("Q")
        self.stop_enter, self.stop_exit = array("q"), array("q")
        self.kernel_enter, self.kernel_exit, self.ret = array("q"), array("q"), array("q")
        self.flags = array("B")
        self.role_id = array("H")
        self.raw_at, self.raw_len = array("Q"), array("H")
        self.blob = bytearray()
        self.roles: list[str] = [""]
        self._role_ids: dict[str, int] = {"": 0}
        #: Request name -> ioctls seen after the limit was reached (not kept).
        self.dropped: Counter[str] = Counter()
        self._fresh: list[tuple[int, int, int, int, int, bytes | None, int, bool]] = []

    def add(self, pid: int, tid: int, fd: int, request: int, arg: int, raw: bytes | None, stop_ns: int,
            first_run: bool = False) -> int:
        """A new row at the tracee's stop; returns its index, or -1 past the limit (then only counted).

        The row waits as a tuple (one append: this runs at every stop) and goes into the columns on
        the next look at the log (:meth:`settle`)."""
        n = len(self.pid) + len(self._fresh)
        if n >= self.limit:
            self.dropped[ioctl_name(request)] += 1
            return -1
        self._fresh.append((pid, tid, fd, request, arg, raw, stop_ns, first_run))
        return n

    def settle(self) -> None:
        """Move the rows added since the last look into the columns (before reading them directly)."""
        if not self._fresh:
            return
        fresh, self._fresh = self._fresh, []
        for pid, tid, fd, request, arg, raw, stop_ns, first_run in fresh:
            self.pid.append(pid)
            self.tid.append(tid)
            self.fd.append(fd)
            self.request.append(request & 0xFFFFFFFFFFFFFFFF)
            self.arg.append(arg & 0xFFFFFFFFFFFFFFFF)
            self.stop_enter.append(stop_ns)
            for col in (self.stop_exit, self.kernel_enter, self.kernel_exit, self.ret):
                col.append(_NONE)
            self.flags.append((_FIRST_RUN if first_run else 0) | (_HAS_RAW if raw is not None else 0))
            self.role_id.append(0)
            self.raw_at.append(len(self.blob))
            self.raw_len.append(len(raw) if raw else 0)
            if raw:
                self.blob += raw

    def set_role(self, row: int, role: str) -> None:
        """The fd's role for this call (``system``, ``vm``, ``vcpu0``, ``vm1.vcpu0``, ``fd7``...)."""
        if self._fresh:
            self.settle()
        rid = self._role_ids.get(role)
        if rid is None:
            rid = self._role_ids[role] = len(self.roles)
            self.roles.append(role)
        self.role_id[row] = rid

    def set_kernel(self, row: int, enter_ns: int | None = None, exit_ns: int | None = None,
                   ret: int | None = None) -> None:
        """The kernel's timestamps and result (each only where given)."""
        if self._fresh:
            self.settle()
        if enter_ns is not None:
            self.kernel_enter[row] = enter_ns
        if exit_ns is not None:
            self.kernel_exit[row] = exit_ns
        if ret is not None:
            self.ret[row] = ret

    def set_stop_exit(self, row: int, stop_ns: int, ret: int) -> None:
        """The syscall-exit stop's time and the result read there."""
        if self._fresh:
            self.settle()
        self.stop_exit[row] = stop_ns
        self.ret[row] = ret

    def set_first_run(self, row: int, first: bool) -> None:
        """Whether this KVM_RUN counts as its vCPU's first."""
        if self._fresh:
            self.settle()
        self.flags[row] = (self.flags[row] & ~_FIRST_RUN) | (_FIRST_RUN if first else 0)

    def ret_of(self, row: int) -> int | None:
        """The result, if known."""
        if self._fresh:
            self.settle()
        return _opt(self.ret[row])

    def __len__(self) -> int:
        if self._fresh:
            self.settle()
        return len(self.pid)

    def event(self, i: int) -> IoctlEvent:
        """Row ``i`` as an IoctlEvent (a copy: changing it does not change the log)."""
        if self._fresh:
            self.settle()
        request = self.request[i]
        raw = None
        if self.flags[i] & _HAS_RAW:
            at = self.raw_at[i]
            raw = bytes(self.blob[at:at + self.raw_len[i]])
        return IoctlEvent(i, self.pid[i], self.tid[i], self.fd[i], self.roles[self.role_id[i]], request,
                          ioctl_name(request), self.arg[i], raw, self.stop_enter[i],
                          _opt(self.stop_exit[i]), _opt(self.ret[i]), _opt(self.kernel_enter[i]),
                          _opt(self.kernel_exit[i]), bool(self.flags[i] & _FIRST_RUN))

    @overload
    def __getitem__(self, i: int) -> IoctlEvent: ...

    @overload
    def __getitem__(self, i: slice) -> list[IoctlEvent]: ...

    def __getitem__(self, i: int | slice) -> IoctlEvent | list[IoctlEvent]:
        if isinstance(i, slice):
            return [self.event(k) for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.event(i)

    def __iter__(self) -> Iterator[IoctlEvent]:
        return (self.event(i) for i in range(len(self)))

    def __bool__(self) -> bool:
        return len(self) > 0

    def index(self, ev: IoctlEvent) -> int:
        """The row of an event read from this log."""
        if 0 <= ev.index < len(self) and self.event(ev.index) == ev:
            return ev.index
        raise ValueError("not an event of this log")
