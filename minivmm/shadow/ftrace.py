"""``--ftrace``: cross-check the run against the kernel's own record (the kvm tracepoints).

A private trace *instance* (its own ring buffer; global tracing is left alone) records
``kvm:kvm_mmio``, ``kvm:kvm_fast_mmio``, ``kvm:kvm_pio`` and ``kvm:kvm_userspace_exit`` for this
process's threads (``set_event_pid`` with ``event-fork``, so vCPU threads started later are included).
tracefs is used where it is mounted, else mounted on a private temporary directory for the run.

The checks, after the run:
1. every IO and MMIO exit to userspace the kernel recorded was seen by the VMM (counts per reason);
2. every MMIO write the kernel completed in the kernel (a ``kvm_mmio`` write, or ``kvm_fast_mmio``, not
   followed on the same thread by an MMIO exit to userspace) is accounted for: per address, their
   number equals what the doorbells' eventfds counted there, and the shadow had a device there.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

EVENTS = ("kvm/kvm_mmio", "kvm/kvm_fast_mmio", "kvm/kvm_pio", "kvm/kvm_userspace_exit")
BUFFER_KB_PER_CPU = 65536

_LINE = re.compile(r"^\s*\S.*?-(\d+)\s+\[\d+\].*?:\s+(kvm_\w+):\s+(.*)$")
_MMIO = re.compile(r"mmio (\S+) len (\d+) gpa (0x[0-9a-f]+) val (0x[0-9a-f]+)")
_FAST = re.compile(r"fast mmio at gpa (0x[0-9a-f]+)")
_EXIT = re.compile(r"reason (\S+) \((\d+)\)")


class FtraceUnavailable(RuntimeError):
    """tracefs cannot be used here (not root, not mountable, no kvm events); the message says why."""


#: The prefix of the private mounts runs make when tracefs is not mounted.
_PRIVATE_MOUNT_PREFIX = "minivmm-tracefs-"


def _find_tracefs() -> str | None:
    """A tracefs mount to use; never another run's private mount (it goes away when that run ends)."""
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "tracefs" and _PRIVATE_MOUNT_PREFIX not in parts[1]:
                return parts[1]
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@dataclass
class FtraceSession:
    """An armed trace instance; ``stop()`` returns its lines and removes it."""

    root: str
    instance: str
    #: A temporary directory made for our own tracefs mount (unmounted and removed by teardown).
    mounted_here: str | None = None
    #: Whether the instance was made (it then holds kernel buffers until removed).
    created: bool = False
    lines: list[str] = field(default_factory=list)
    overruns: int = 0

    @classmethod
    def start(cls, pid: int) -> FtraceSession:
        """Mount (if needed) and arm an instance for ``pid`` and its future threads."""
        session = cls("", "")
        # Any exception (a KeyboardInterrupt included) between here and the return removes what was
        # made: an instance left behind keeps its buffers (BUFFER_KB_PER_CPU per CPU) and tracing_on
        # forever, and a mount of ours stays mounted.
        try:
            root = _find_tracefs()
            if root is None:
                session.mounted_here = tempfile.mkdtemp(prefix=f"{_PRIVATE_MOUNT_PREFIX}{os.getpid()}-")
                proc = subprocess.run(["mount", "-t", "tracefs", "nodev", session.mounted_here],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise FtraceUnavailable(f"cannot mount tracefs: {proc.stderr.strip() or 'permission denied'}")
                root = session.mounted_here
            session.root = root
            session.instance = os.path.join(root, "instances", f"minivmm-{pid}-{os.urandom(3).hex()}")
            os.mkdir(session.instance)
            session.created = True
            for event in EVENTS:
                if not os.path.exists(os.path.join(session.instance, "events", event)):
                    raise FtraceUnavailable(f"the kernel has no {event} tracepoint")
            _write(os.path.join(session.instance, "buffer_size_kb"), str(BUFFER_KB_PER_CPU))
            _write(os.path.join(session.instance, "options", "event-fork"), "1")
            _write(os.path.join(session.instance, "set_event_pid"), str(pid))
            for event in EVENTS:
                _write(os.path.join(session.instance, "events", event, "enable"), "1")
            _write(os.path.join(session.instance, "tracing_on"), "1")
        except OSError as e:
            session.teardown()
            raise FtraceUnavailable(f"cannot set up a trace instance: {e.strerror}") from None
        except BaseException:
            session.teardown()
            raise
        return session

    def stop(self) -> list[str]:
        """Stop tracing, read the record, remove the instance (and the mount, if ours).

        Raises FtraceUnavailable when the record cannot be read (the instance or its mount was removed
        by someone else during the run).
        """
        try:
            _write(os.path.join(self.instance, "tracing_on"), "0")
            with open(os.path.join(self.instance, "trace")) as f:
                self.lines = [line for line in f if not line.startswith("#")]
            per_cpu = os.path.join(self.instance, "per_cpu")
            for cpu in os.listdir(per_cpu):
                with open(os.path.join(per_cpu, cpu, "stats")) as f:
                    for line in f:
                        if line.startswith("overrun:"):
                            self.overruns += int(line.split()[1])
        except OSError as e:
            raise FtraceUnavailable(f"the trace instance could not be read after the run: {e.strerror}") from None
        finally:
            self.teardown()
        return self.lines

    def teardown(self) -> None:
        """Remove the instance (tracing off, events off, its buffers freed) and our tracefs mount, if any.

        Idempotent, and safe after a partial start: each step is tried whatever the previous did.
        Trace instances are global to the kernel, whichever tracefs mount shows them: when the mount
        the instance was made through has gone (unmounted by someone else during the run), it is
        removed through another mount, or through a mount made for that.
        """
        if self.instance and self.created:
            name = os.path.basename(self.instance)
            extra = None
            path = self._reachable(name)
            if path is None:
                extra = tempfile.mkdtemp(prefix=f"{_PRIVATE_MOUNT_PREFIX}{os.getpid()}-")
                subprocess.run(["mount", "-t", "tracefs", "nodev", extra], capture_output=True)
                candidate = os.path.join(extra, "instances", name)
                path = candidate if os.path.isdir(candidate) else None
            if path is not None:
                _remove_instance(path)
            if extra is not None:
                subprocess.run(["umount", extra], capture_output=True)
                try:
                    os.rmdir(extra)
                except OSError:
                    pass
            self.created = False
        if self.mounted_here:
            # Unmounted whether or not the mount was known to succeed (an interrupt may have come
            # between mount's success and our noting it); umount of a plain directory just fails.
            subprocess.run(["umount", self.mounted_here], capture_output=True)
            try:
                os.rmdir(self.mounted_here)
            except OSError:
                pass
            self.mounted_here = None

    def _reachable(self, name: str) -> str | None:
        """The instance's path through its own mount, or through any tracefs mount there is now."""
        if os.path.isdir(self.instance):
            return self.instance
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "tracefs":
                    path = os.path.join(parts[1], "instances", name)
                    if os.path.isdir(path):
                        return path
        return None


def _remove_instance(path: str) -> None:
    """Tracing off, events off, then rmdir: the kernel frees the instance's buffers."""
    try:
        _write(os.path.join(path, "tracing_on"), "0")
    except OSError:
        pass
    for event in EVENTS:
        try:
            _write(os.path.join(path, "events", event, "enable"), "0")
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass


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


def analyse(lines: list[str], overruns: int, vmm_exits: dict[str, int], doorbell_counts: dict[int, int],
            shadow_addresses: set[int]) -> FtraceResult:
    """Compare the kernel's record with what the VMM saw and what the shadow knew."""
    exits: Counter[str] = Counter()
    in_kernel: Counter[int] = Counter()
    pending: dict[str, int] = {}  # pid -> gpa of an MMIO write not yet known to be in-kernel or exited
    events = 0
    for line in lines:
        m = _LINE.match(line)
        if not m:
            continue
        events += 1
        pid, name, body = m.groups()
        if name == "kvm_mmio":
            # Any later MMIO access on the same thread means the pending write did not exit.
            if pid in pending:
                in_kernel[pending.pop(pid)] += 1
            mm = _MMIO.search(body)
            if mm and mm.group(1) == "write":
                pending[pid] = int(mm.group(3), 16)
        elif name == "kvm_fast_mmio":
            fm = _FAST.search(body)
            if fm:
                in_kernel[int(fm.group(1), 16)] += 1
        elif name == "kvm_userspace_exit":
            em = _EXIT.search(body)
            reason = em.group(1) if em else "?"
            exits[reason] += 1
            gpa = pending.pop(pid, None)
            if gpa is not None and reason != "KVM_EXIT_MMIO":
                in_kernel[gpa] += 1
        elif name == "kvm_pio" and pid in pending:
            in_kernel[pending.pop(pid)] += 1
    for gpa in pending.values():  # the last write of a thread, with no exit after it
        in_kernel[gpa] += 1
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
