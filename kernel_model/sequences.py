"""Named VM set-up sequences (shared by ``minivmm model`` and ``minivmm timing``) and sequence files.

A sequence is a list of :class:`Step` s, each an ioctl (or a vCPU starting to run) with the gap the VMM
leaves before it. The same steps drive the kernel model and, in ``minivmm timing``, real ioctls.

Sequence file format (one step per line, ``#`` starts a comment; sizes take K/M/G, times us/ms)::

    gap 10us                      # default gap before every following step (initially 10us)
    create_vm
    memslot slot=0 base=0 size=128M        # size=0 deletes the slot; another base moves it
    irqchip
    ioeventfd addr=0xd0000050 len=4 [datamatch=0] [pio]
    ioeventfd_deassign addr=0xd0000050 len=4 [datamatch=0] [pio]
    vcpu id=0
    run vcpu=0 [section=3us] [period=10us]  # the vCPU enters KVM_RUN and keeps handling exits
    sleep 1ms                     # an extra pause before the next step
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DEFAULT_GAP_NS = 10_000
DEFAULT_SECTION_NS = 3_000
DEFAULT_PERIOD_NS = 10_000

OPS = ("create_vm", "memslot", "irqchip", "ioeventfd", "ioeventfd_deassign", "vcpu", "run")


@dataclass(frozen=True)
class Step:
    """One step: ``op`` with its arguments, ``gap_ns`` after the previous step."""

    op: str
    args: dict[str, Any] = field(default_factory=dict)
    gap_ns: int = DEFAULT_GAP_NS

    @property
    def label(self) -> str:
        """How reports name the step, in the ioctl's terms: ``KVM_CREATE_VCPU, 0``."""
        a = self.args
        if self.op == "create_vm":
            return "KVM_CREATE_VM"
        if self.op == "memslot":
            return f"KVM_SET_USER_MEMORY_REGION, slot {a['slot']}" + (" (delete)" if a["size"] == 0 else "")
        if self.op == "irqchip":
            return "KVM_CREATE_IRQCHIP"
        if self.op in ("ioeventfd", "ioeventfd_deassign"):
            kind = "pio" if a.get("pio") else "mmio"
            verb = "" if self.op == "ioeventfd" else " deassign"
            return f"KVM_IOEVENTFD{verb}, {kind} {a['addr']:#x}"
        if self.op == "vcpu":
            return f"KVM_CREATE_VCPU, {a['id']}"
        if self.op == "run":
            return f"KVM_RUN, vcpu {a['vcpu']} (first entry)"
        return self.op


    def strace(self, seconds: float, fds: dict[str, int] | None = None) -> str:
        """The step as ``strace -T`` prints it; symbolic fds (``vm``, ``vcpu0``) unless ``fds`` are given."""
        a = self.args
        fds = fds or {}
        vm = str(fds.get("vm", "vm"))
        if self.op == "create_vm":
            fd, name, arg = fds.get("kvm", "kvm"), "KVM_CREATE_VM", "0"
        elif self.op == "memslot":
            fd, name = vm, "KVM_SET_USER_MEMORY_REGION"
            arg = f"{{slot={a['slot']}, flags=0, guest_phys_addr={a['base']:#x}, memory_size={a['size']}, ...}}"
        elif self.op == "irqchip":
            fd, name, arg = vm, "KVM_CREATE_IRQCHIP", "0"
        elif self.op in ("ioeventfd", "ioeventfd_deassign"):
            fd, name = vm, "KVM_IOEVENTFD"
            flags = [f for f, on in (("DATAMATCH", a.get("datamatch") is not None), ("PIO", a.get("pio")),
                                     ("DEASSIGN", self.op == "ioeventfd_deassign")) if on]
            arg = f"{{addr={a['addr']:#x}, len={a['len']}, flags={'|'.join(flags) or '0'}, ...}}"
        elif self.op == "vcpu":
            fd, name, arg = vm, "KVM_CREATE_VCPU", str(a["id"])
        else:
            fd, name, arg = fds.get(f"vcpu{a['vcpu']}", f"vcpu{a['vcpu']}"), "KVM_RUN", "0"
        return f"ioctl({fd}, {name}, {arg}) = 0 <{seconds:.6f}>"


@dataclass(frozen=True)
class Sequence:
    """A named list of steps."""

    name: str
    description: str
    steps: tuple[Step, ...]


class SequenceError(ValueError):
    """A sequence file could not be read; the message names the line."""


def _virtio_mmio_notifies(n: int, gap_ns: int = DEFAULT_GAP_NS) -> list[Step]:
    """``n`` virtio-mmio QUEUE_NOTIFY ioeventfds, two queues per device, as Firecracker places them."""
    return [Step("ioeventfd", {"addr": 0xD0000000 + (i // 2) * 0x1000 + 0x50, "len": 4, "datamatch": i % 2},
                 gap_ns) for i in range(n)]


RAM = 128 << 20

SEQUENCES: dict[str, Sequence] = {s.name: s for s in (
    Sequence("firecracker",
             "Firecracker's order: guest memory, then the irqchip and the virtio-mmio ioeventfds, then the "
             "vCPUs and the first KVM_RUN. On VMX the stall lands in KVM_CREATE_VCPU 0.",
             (Step("create_vm"), Step("memslot", {"slot": 0, "base": 0, "size": RAM}), Step("irqchip"),
              *_virtio_mmio_notifies(6), Step("vcpu", {"id": 0}), Step("vcpu", {"id": 1}),
              Step("run", {"vcpu": 0, "section": DEFAULT_SECTION_NS, "period": DEFAULT_PERIOD_NS}))),
    Sequence("registrations-first",
             "Device registrations before the first memslot: the stall lands in the first "
             "KVM_SET_USER_MEMORY_REGION (where it shows on hosts without an APIC-access-page memslot).",
             (Step("create_vm"), Step("irqchip"), *_virtio_mmio_notifies(6),
              Step("memslot", {"slot": 0, "base": 0, "size": RAM}), Step("vcpu", {"id": 0}),
              Step("vcpu", {"id": 1}))),
    Sequence("arm64-order",
             "vCPUs first, then the device registrations, then a memslot change (arm64 VMMs): the "
             "created_vcpus fix does not help here. (No irqchip step: x86 refuses KVM_CREATE_IRQCHIP "
             "once vCPUs exist.)",
             (Step("create_vm"), Step("vcpu", {"id": 0}), Step("vcpu", {"id": 1}),
              *_virtio_mmio_notifies(6), Step("memslot", {"slot": 0, "base": 0, "size": RAM}))),
    Sequence("late-registration",
             "Registrations while vCPU 0 runs a guest (a VMM that registers devices during guest boot): "
             "readers are active, which is what the per-registration synchronize paid for.",
             (Step("create_vm"), Step("memslot", {"slot": 0, "base": 0, "size": RAM}), Step("irqchip"),
              Step("vcpu", {"id": 0}),
              Step("run", {"vcpu": 0, "section": DEFAULT_SECTION_NS, "period": DEFAULT_PERIOD_NS}),
              *_virtio_mmio_notifies(6, gap_ns=200_000),
              Step("memslot", {"slot": 1, "base": 0x100000000, "size": 2 << 20}))),
    Sequence("deregistrations-running",
             "Register and, 12 ms later (the registration's own grace period is over), deregister six "
             "ioeventfds while vCPU 0 runs a guest that exits on every loop: each deregistration's "
             "kvm_io_bus_unregister_dev() pays synchronize_srcu_expedited() against the vCPU's readers, "
             "in every variant. Measures the expedited grace period with active readers.",
             (Step("create_vm"), Step("memslot", {"slot": 0, "base": 0, "size": RAM}), Step("irqchip"),
              Step("vcpu", {"id": 0}),
              Step("run", {"vcpu": 0, "section": DEFAULT_SECTION_NS, "period": DEFAULT_PERIOD_NS}),
              *(step for n in _virtio_mmio_notifies(6, gap_ns=200_000)
                for step in (n, Step("ioeventfd_deassign", n.args, 12_000_000))))),
)}


_SIZE = re.compile(r"^(0x[0-9a-fA-F]+|\d+)([KMG]?)$", re.I)
_TIME = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|ms|s)$")
_TIME_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_ARGS = {
    "create_vm": {}, "irqchip": {},
    "memslot": {"slot": "int", "base": "size", "size": "size"},
    "ioeventfd": {"addr": "int", "len": "int", "datamatch": "int", "pio": "flag"},
    "ioeventfd_deassign": {"addr": "int", "len": "int", "datamatch": "int", "pio": "flag"},
    "vcpu": {"id": "int"},
    "run": {"vcpu": "int", "section": "time", "period": "time"},
}
_REQUIRED = {"memslot": {"slot", "base", "size"}, "ioeventfd": {"addr", "len"},
             "ioeventfd_deassign": {"addr", "len"}, "vcpu": {"id"}, "run": {"vcpu"}}


def parse_time(text: str) -> int:
    """``10us`` -> 10000 (ns)."""
    m = _TIME.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration (examples: 10us, 1.5ms)")
    return int(float(m.group(1)) * _TIME_UNITS[m.group(2)])


def _parse_size(text: str) -> int:
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (examples: 128M, 0x100000)")
    return int(m.group(1), 0) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


def parse_sequence(text: str, name: str = "file") -> Sequence:
    """Parse a sequence file (see the module docstring); SequenceError names the bad line."""
    steps: list[Step] = []
    gap = DEFAULT_GAP_NS
    extra = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        op, rest = words[0], words[1:]
        try:
            if op in ("gap", "sleep"):
                if len(rest) != 1:
                    raise ValueError(f"'{op}' takes one duration")
                if op == "gap":
                    gap = parse_time(rest[0])
                else:
                    extra += parse_time(rest[0])
                continue
            if op not in _ARGS:
                raise ValueError(f"unknown step {op!r} (known: {', '.join(list(_ARGS) + ['gap', 'sleep'])})")
            args: dict[str, Any] = {}
            for word in rest:
                key, sep, value = word.partition("=")
                kind = _ARGS[op].get(key)
                if kind is None:
                    raise ValueError(f"{op} takes no argument {key!r}")
                if kind == "flag":
                    if sep:
                        raise ValueError(f"{key} is a flag: write it without a value")
                    args[key] = True
                elif not sep:
                    raise ValueError(f"{key} needs a value ({key}=...)")
                elif kind == "int":
                    args[key] = int(value, 0)
                elif kind == "size":
                    args[key] = _parse_size(value)
                else:
                    args[key] = parse_time(value)
            missing = _REQUIRED.get(op, set()) - args.keys()
            if missing:
                raise ValueError(f"{op} needs {', '.join(sorted(missing))}")
            if op == "run":
                args.setdefault("section", DEFAULT_SECTION_NS)
                args.setdefault("period", DEFAULT_PERIOD_NS)
                if not 0 < args["section"] < args["period"]:
                    raise ValueError("run needs 0 < section < period")
            if op.startswith("ioeventfd"):
                args.setdefault("datamatch", None)
                args.setdefault("pio", False)
        except ValueError as e:
            raise SequenceError(f"{name}:{lineno}: {e}") from None
        steps.append(Step(op, args, gap + extra))
        extra = 0
    if not steps:
        raise SequenceError(f"{name}: no steps")
    if steps[0].op != "create_vm":
        raise SequenceError(f"{name}: the first step must be create_vm")
    if any(s.op == "create_vm" for s in steps[1:]):
        raise SequenceError(f"{name}: only one create_vm per sequence")
    return Sequence(name, f"from {name}", tuple(steps))


def load_sequence(name_or_path: str) -> Sequence:
    """A named sequence, or a sequence file. ValueError (SequenceError) says what is wrong."""
    if name_or_path in SEQUENCES:
        return SEQUENCES[name_or_path]
    try:
        with open(name_or_path) as f:
            text = f.read()
    except FileNotFoundError:
        raise SequenceError(f"{name_or_path!r} is neither a named sequence ({', '.join(SEQUENCES)}) "
                            "nor an existing file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SequenceError(f"sequence file {name_or_path!r} cannot be read: {e}") from None
    return parse_sequence(text, name_or_path)


def with_gaps(seq: Sequence, gaps_ns: list[int] | None) -> Sequence:
    """The same sequence with the given gap before each step (e.g. gaps measured on a real run)."""
    if gaps_ns is None:
        return seq
    if len(gaps_ns) != len(seq.steps):
        raise ValueError("one gap per step is needed")
    return Sequence(seq.name, seq.description,
                    tuple(Step(s.op, s.args, g) for s, g in zip(seq.steps, gaps_ns)))
