"""The kernel's own timestamps of the tracee's ioctls: ``syscalls:sys_enter_ioctl``/``sys_exit_ioctl`` in
a private tracefs instance (:mod:`minivmm.tracefs`).

Why these and not the ptrace stops: the kernel fires ``sys_enter`` after the seccomp filter (so after
the tracer has resumed the tracee from its seccomp stop) and ``sys_exit`` before any syscall-exit
stop, so the tracer's own latency is outside the interval. The instance uses ``trace_clock=mono``
(CLOCK_MONOTONIC, the clock the ptrace fallback uses too) and follows the tracee's threads and children
(``set_event_pid`` + ``event-fork``). Only ``ioctl`` is recorded: other system calls of the tracee
write nothing.

The instance (and the tracefs mount, if we made it) is removed in every case: :class:`KernelClock` is
a context manager, ``close()`` is idempotent, and minivmm.tracefs removes it at exit and on signals
too, and removes what a killed run left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minivmm.tracefs import Instance, Record, Session, TracefsUnavailable

BUFFER_KB_PER_CPU = 16384
ENTER, EXIT = "syscalls/sys_enter_ioctl", "syscalls/sys_exit_ioctl"


class KernelClockUnavailable(RuntimeError):
    """tracefs or the syscall events cannot be used here; the message says why."""


@dataclass
class SyscallSpan:
    """One ioctl as the kernel saw it: thread, fd, request, enter/exit timestamps (ns), return value."""

    tid: int
    fd: int
    request: int
    enter_ns: int
    exit_ns: int | None = None
    ret: int | None = None


@dataclass
class KernelClock:
    """A private trace instance recording the ioctls of one process tree."""

    session: Session | None = None
    instance: Instance | None = None
    spans: dict[int, list[SyscallSpan]] = field(default_factory=dict)
    overruns: int = 0

    @classmethod
    def open(cls, pid: int) -> KernelClock:
        """Arm an instance for ``pid`` (a stopped child, before its exec) and its future threads."""
        clock = cls()
        try:
            clock.session = Session.open()
            inst = clock.instance = clock.session.instance("trace")
            for event in (ENTER, EXIT):
                if not inst.has_event(event):
                    raise KernelClockUnavailable(f"the kernel has no {event.replace('/', ':')} tracepoint")
            inst.enable(ENTER, ("fd", "cmd"))
            inst.enable(EXIT, ("ret",))
            inst.follow([pid])
            inst.start(clock="mono", buffer_kb=BUFFER_KB_PER_CPU, overwrite=False)
        except TracefsUnavailable as e:
            clock.close()
            raise KernelClockUnavailable(str(e)) from None
        except OSError as e:
            clock.close()
            raise KernelClockUnavailable(f"cannot set up a trace instance: {e.strerror}") from None
        except BaseException:
            clock.close()
            raise
        return clock

    def __enter__(self) -> KernelClock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def root(self) -> str:
        """The tracefs mount used."""
        return self.session.root if self.session else ""

    def collect(self) -> dict[int, list[SyscallSpan]]:
        """Stop recording, read the record (per thread, in order) and remove the instance."""
        assert self.instance is not None
        try:
            self.instance.stop()
            records = self.instance.drain(final=True)
            self.overruns = self.instance.overruns()
        finally:
            self.close()
        self.spans = spans_of(records)
        return self.spans

    def close(self) -> None:
        """Remove the instance and our mount; safe to call more than once."""
        if self.session is not None:
            self.session.close()


def spans_of(records: list[Record]) -> dict[int, list[SyscallSpan]]:
    """Per thread, its ioctls as enter/exit spans, from the records in time order. A thread makes one
    system call at a time, so an exit belongs to the thread's open enter; an exit with none open (its
    enter was lost) is dropped."""
    spans: dict[int, list[SyscallSpan]] = {}
    open_span: dict[int, SyscallSpan] = {}
    for rec in records:
        if rec.event == ENTER:
            fd, cmd = rec.fields
            span = SyscallSpan(rec.pid, fd & 0xFFFFFFFF, cmd & 0xFFFFFFFF, rec.ts)
            spans.setdefault(rec.pid, []).append(span)
            open_span[rec.pid] = span
        elif rec.event == EXIT:
            span_open = open_span.pop(rec.pid, None)
            if span_open is not None:
                span_open.exit_ns = rec.ts
                span_open.ret = rec.fields[0]
    return spans
