"""``--ftrace``: cross-check the run against the kernel's own record (the kvm tracepoints).

A private trace *instance* (its own ring buffer; global tracing is left alone) records
``kvm:kvm_mmio``, ``kvm:kvm_fast_mmio``, ``kvm:kvm_pio`` and ``kvm:kvm_userspace_exit`` for this
process's threads (``set_event_pid`` with ``event-fork``, so vCPU threads started later are included),
through :mod:`minivmm.tracefs` (where tracefs is, the instance, its binary record, its removal).

The checks, after the run:
1. every IO and MMIO exit to userspace the kernel recorded was seen by the VMM (counts per reason);
2. every MMIO write the kernel completed in the kernel (a ``kvm_mmio`` write, or ``kvm_fast_mmio``, not
   followed on the same thread by an MMIO exit to userspace) is accounted for: per address, their
   number equals what the doorbells' eventfds counted there, and the shadow had a device there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from minivmm.kvm.uapi import lib
from minivmm.tracefs import Instance, Record, Session, TracefsUnavailable, print_symbols

#: The events and the fields kept of each.
EVENTS: dict[str, tuple[str, ...]] = {
    "kvm/kvm_mmio": ("type", "len", "gpa", "val"),
    "kvm/kvm_fast_mmio": ("gpa",),
    "kvm/kvm_pio": ("rw", "port", "size", "count", "val"),
    "kvm/kvm_userspace_exit": ("reason", "errno"),
}
BUFFER_KB_PER_CPU = 65536
#: kvm_mmio's type (include/trace/events/kvm.h: KVM_TRACE_MMIO_WRITE).
MMIO_WRITE = 2
#: Exit reason -> name, as this kernel's kvm_userspace_exit prints it (read from its format when armed).
_EXIT_NAMES: dict[int, str] = {}


class FtraceUnavailable(RuntimeError):
    """tracefs cannot be used here (not root, not mountable, no kvm events); the message says why."""


@dataclass(eq=False)
class FtraceSession:
    """An armed trace instance; ``stop()`` returns its records and removes it."""

    session: Session | None = None
    instance: Instance | None = None
    records: list[Record] = field(default_factory=list)
    overruns: int = 0

    @classmethod
    def start(cls, pid: int) -> FtraceSession:
        """Arm an instance for ``pid`` and its future threads (``minivmm.tracefs``; any exception, a
        KeyboardInterrupt included, removes what was made: an instance left behind keeps its buffers,
        BUFFER_KB_PER_CPU per CPU, forever, and a mount of ours stays mounted)."""
        out = cls()
        try:
            out.session = Session.open()
            out.instance = out.session.instance("ftrace")
            for event in EVENTS:
                if not out.instance.has_event(event):
                    raise FtraceUnavailable(f"the kernel has no {event} tracepoint")
            for event, fields in EVENTS.items():
                out.instance.enable(event, fields)
            _EXIT_NAMES.update(print_symbols(out.instance.format("kvm/kvm_userspace_exit"), "reason"))
            out.instance.follow([pid])
            out.instance.start(clock="mono", buffer_kb=BUFFER_KB_PER_CPU, overwrite=True)
        except TracefsUnavailable as e:
            out.teardown()
            raise FtraceUnavailable(str(e)) from None
        except OSError as e:
            out.teardown()
            raise FtraceUnavailable(f"cannot set up a trace instance: {e.strerror}") from None
        except BaseException:
            out.teardown()
            raise
        return out

    def stop(self) -> list[Record]:
        """Stop tracing, read the record, remove the instance (and the mount, if ours).

        Raises FtraceUnavailable when the record cannot be read (the instance or its mount was removed
        by someone else during the run).
        """
        try:
            if self.instance is None:
                raise FtraceUnavailable("the trace instance could not be read after the run: it was never made")
            self.instance.stop()
            self.records = self.instance.drain(final=True)
            self.overruns = self.instance.overruns()
        except OSError as e:
            raise FtraceUnavailable(f"the trace instance could not be read after the run: {e.strerror}") from None
        finally:
            self.teardown()
        return self.records

    def teardown(self) -> None:
        """Remove the instance (its buffers freed) and our tracefs mount, if any; idempotent, safe after
        a partial start, and done even when the mount was unmounted under us (see minivmm.tracefs)."""
        if self.session is not None:
            self.session.close()


@dataclass
class FtraceResult:
    """What the kernel recorded, and how it compares."""

    events: int
    overruns: int
    kernel_userspace_exits: dict[str, int]
    vmm_exits: dict[str, int]
    in_kernel_writes: dict[int, int]
    doorbell_counts: dict[int, int]
    mismatches: list[str]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (addresses in hex)."""
        return {"events": self.events, "overruns": self.overruns,
                "kernel_userspace_exits": self.kernel_userspace_exits, "vmm_exits": self.vmm_exits,
                "in_kernel_writes": {hex(a): n for a, n in self.in_kernel_writes.items()},
                "doorbell_counts": {hex(a): n for a, n in self.doorbell_counts.items()},
                "mismatches": self.mismatches}


def _exit_name(reason: int, err: int, names: dict[int, str]) -> str:
    """As the kvm_userspace_exit event prints it: its KVM_EXIT_* name, or restart/error for a failed run."""
    if err < 0:
        return "restart" if err == -4 else "error"
    return names.get(reason, f"KVM_EXIT_{reason}")


def _count_exits(records: list[Record], exit_names: dict[int, str]) -> tuple[int, Counter[str], Counter[int]]:
    """From the kernel's record: how many events were read, the exits to userspace by reason, and the MMIO
    writes completed in the kernel (by an ioeventfd) by address. A write is in-kernel when the same thread's
    next event is not its exit to userspace with KVM_EXIT_MMIO."""
    exits: Counter[str] = Counter()
    in_kernel: Counter[int] = Counter()
    pending: dict[int, int] = {}  # thread -> gpa of an MMIO write not yet known to be in-kernel or exited
    events = 0
    for rec in records:
        if rec.event not in EVENTS:
            continue
        events += 1
        tid, name = rec.pid, rec.event
        if name == "kvm/kvm_mmio":
            # Any later MMIO access on the same thread means the pending write did not exit.
            if tid in pending:
                in_kernel[pending.pop(tid)] += 1
            if rec.fields[0] == MMIO_WRITE:
                pending[tid] = rec.fields[2]
        elif name == "kvm/kvm_fast_mmio":
            in_kernel[rec.fields[0]] += 1
        elif name == "kvm/kvm_userspace_exit":
            reason = _exit_name(rec.fields[0], rec.fields[1], exit_names)
            exits[reason] += 1
            gpa = pending.pop(tid, None)
            if gpa is not None and reason != "KVM_EXIT_MMIO":
                in_kernel[gpa] += 1
        elif name == "kvm/kvm_pio" and tid in pending:
            in_kernel[pending.pop(tid)] += 1
    for gpa in pending.values():  # the last write of a thread, with no exit after it
        in_kernel[gpa] += 1
    return events, exits, in_kernel


def analyse(records: list[Record], overruns: int, vmm_exits: dict[str, int], doorbell_counts: dict[int, int],
            shadow_addresses: set[int], exit_names: dict[int, str] | None = None) -> FtraceResult:
    """Compare the kernel's record (in time order) with what the VMM saw and what the shadow knew.
    ``exit_names``: the kernel's names of exit reasons (default: the session's, else IO and MMIO)."""
    if exit_names is None:
        exit_names = _EXIT_NAMES or {lib.KVM_EXIT_IO: "KVM_EXIT_IO", lib.KVM_EXIT_MMIO: "KVM_EXIT_MMIO"}
    events, exits, in_kernel = _count_exits(records, exit_names)
    mismatches = []
    if overruns:
        mismatches.append(f"the trace buffer overran ({overruns} events lost): the record is incomplete")
    for reason, key in (("KVM_EXIT_IO", "io"), ("KVM_EXIT_MMIO", "mmio")):
        if exits.get(reason, 0) != vmm_exits.get(key, 0):
            mismatches.append(f"the kernel recorded {exits.get(reason, 0)} {reason} exits to userspace, "
                              f"the VMM saw {vmm_exits.get(key, 0)}")
    for addr in sorted(set(in_kernel) | set(doorbell_counts)):
        traced, counted = in_kernel.get(addr, 0), doorbell_counts.get(addr, 0)
        if traced != counted:
            mismatches.append(f"{traced} in-kernel MMIO write(s) at {addr:#x} traced, but the doorbells' "
                              f"eventfds counted {counted} there")
        if traced and addr not in shadow_addresses:
            mismatches.append(f"{traced} in-kernel MMIO write(s) at {addr:#x} where the shadow never had a device")
    return FtraceResult(events, overruns, dict(exits), dict(vmm_exits), dict(in_kernel), dict(doorbell_counts),
                        mismatches)
