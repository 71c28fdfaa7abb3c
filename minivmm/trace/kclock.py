"""The kernel's own timestamps of the tracee's ioctls: ``syscalls:sys_enter_ioctl``/``sys_exit_ioctl`` in
a private tracefs instance (:mod:`minivmm.tracefs`).

Why these and not the ptrace stops: the kernel fires ``sys_enter`` after the seccomp filter (so after
the tracer has resumed the tracee from its seccomp stop) and ``sys_exit`` before any syscall-exit
stop, so the tracer's own latency is outside the interval. The instance uses ``trace_clock=mono``
(CLOCK_MONOTONIC, the clock the ptrace fallback uses too) and follows the tracee's threads and children
(``set_event_pid`` + ``event-fork``). Only KVM ioctls are recorded on the way in (a filter on the
request's type), and on the way out every ioctl's result (the exit event has no request to filter on);
with them the tracee's ``close()`` calls and ``exit_group`` (for its teardown), nothing else.

Enabling any syscall tracepoint puts every task of the host on the kernel's slower system-call path
while the instance exists (the tracepoints are called from it); docs/trace.md, "Accuracy and cost", gives the
measured price.

The instance (and the tracefs mount, if we made it) is removed in every case: :class:`KernelClock` is
a context manager, ``close()`` is idempotent, and minivmm.tracefs removes it at exit and on signals
too, and removes what a killed run left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minivmm.trace import srcu_check
from minivmm.trace.syscalls import KVMIO
from minivmm.tracefs import COMMIT_SLACK_NS, Instance, Record, Session, TracefsUnavailable

BUFFER_KB_PER_CPU = 16384
ENTER, EXIT = "syscalls/sys_enter_ioctl", "syscalls/sys_exit_ioctl"
CLOSE, CLOSED, EXIT_GROUP = "syscalls/sys_enter_close", "syscalls/sys_exit_close", "syscalls/sys_enter_exit_group"


def kvm_request_filter(field_name: str = "cmd") -> str:
    """A tracefs filter true exactly when ``_IOC_TYPE(field) == KVMIO`` (bits 8..15 of the request).
    Filters have no masked equality, so each of the eight bits is tested on its own."""
    return " && ".join(f"{'' if KVMIO >> k & 1 else '!'}({field_name} & {1 << (8 + k):#x})" for k in range(8))


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
    """A private trace instance recording the KVM ioctls, the ``close()`` calls and the ``exit_group``
    of one process tree. The record is read with :meth:`poll` while tracing runs and with
    :meth:`finish` at the end; ``close()`` removes the instance on any path."""

    session: Session | None = None
    instance: Instance | None = None
    overruns: int = 0
    #: Whether close()/exit_group are recorded (their events exist here).
    teardown_events: bool = False
    #: The SRCU grace-period machinery's events (minivmm.trace.srcu_check), in an instance of their own;
    #: None, with ``srcu_note`` saying why, where they cannot be recorded.
    srcu: Instance | None = None
    srcu_note: str = ""
    #: What :meth:`finish` read last of the SRCU instance.
    srcu_records: list[Record] = field(default_factory=list)

    @classmethod
    def open(cls, pids: list[int]) -> KernelClock:
        """Arm an instance for ``pids`` (threads) and every thread and process they start."""
        clock = cls()
        try:
            clock.session = Session.open()
            inst = clock.instance = clock.session.instance("trace")
            for event in (ENTER, EXIT):
                if not inst.has_event(event):
                    raise KernelClockUnavailable(f"the kernel has no {event.replace('/', ':')} tracepoint")
            # Only KVM requests on the way in (the tracee's other ioctls are not written); the way out
            # has no request to filter on, so an exit without a recorded enter is dropped when read.
            inst.enable(ENTER, ("fd", "cmd"), filter=kvm_request_filter())
            inst.enable(EXIT, ("ret",))
            clock.teardown_events = all(inst.has_event(e) for e in (CLOSE, CLOSED, EXIT_GROUP))
            if clock.teardown_events:
                inst.enable(CLOSE, ("fd",))
                inst.enable(CLOSED, ("ret",))
                inst.enable(EXIT_GROUP, ("error_code",))
            inst.follow(pids)
            inst.start(clock="mono", buffer_kb=BUFFER_KB_PER_CPU, overwrite=False)
            try:
                clock.srcu = clock.session.instance("srcu")
                srcu_check.arm(clock.srcu)
            except (TracefsUnavailable, OSError) as e:
                clock.srcu_note = str(e) if isinstance(e, TracefsUnavailable) else f"cannot be recorded: {e.strerror}"
                if clock.srcu is not None:
                    clock.srcu.remove()
                    clock.srcu = None
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

    def read(self) -> int:
        """Take the record out of the kernel's buffers without decoding it (the cheap part, done often
        while tracing runs); returns the bytes of the ioctls' record waiting to be decoded."""
        assert self.instance is not None
        if self.srcu is not None:
            self.srcu.read()
        return self.instance.read()

    def srcu_poll(self, final: bool = False, over: int = 0) -> list[Record]:
        """The SRCU machinery's records so far (all of them with ``final``; none unless more than ``over``
        bytes wait to be decoded)."""
        if self.srcu is None or (not final and self.srcu.read() <= over):
            return []
        return self.srcu.drain(final=final)

    def poll(self, now: bool = False) -> list[Record]:
        """What has been recorded so far, in time order (up to the reading's watermark; with ``now``, up
        to this moment: for a decision that cannot wait, at the price of a record from another CPU
        that was still being written coming in a later poll)."""
        assert self.instance is not None
        return self.instance.drain(slack_ns=0 if now else COMMIT_SLACK_NS)

    def finish(self) -> list[Record]:
        """Stop recording; the rest of the record, in time order; the overrun count. Then removes the
        instance (and our mount)."""
        assert self.instance is not None
        try:
            self.instance.stop()
            if self.srcu is not None:
                self.srcu.stop()
            records = self.instance.drain(final=True)
            self.overruns = self.instance.overruns()
            self.srcu_records = self.srcu_poll(final=True)
        finally:
            self.close()
        return records

    def collect(self) -> dict[int, list[SyscallSpan]]:
        """Stop recording and return every ioctl, per thread, as spans (a whole record at once)."""
        return spans_of(self.finish())

    def close(self) -> None:
        """Remove the instance and our mount; safe to call more than once."""
        if self.session is not None:
            self.session.close()


def spans_of(records: list[Record]) -> dict[int, list[SyscallSpan]]:
    """Per thread, its ioctls as enter/exit spans, from the records in time order. A thread makes one
    system call at a time, so an exit belongs to the thread's open enter; an exit with none open (its
    enter was filtered out, or lost) is dropped."""
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
