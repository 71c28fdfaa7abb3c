"""Named VM set-up sequences (shared by ``minivmm model`` and ``minivmm timing``) and sequence files.

A sequence is a list of :class:`Step` s, each an ioctl (or a vCPU starting to run) with the gap the VMM
leaves before it. The same steps drive the kernel model and, in ``minivmm timing``, real ioctls. What
each op does, in the model and on the host, is its :class:`kernel_model.ops.OpSpec` (and its host step
in ``minivmm.timing.host_ops``); kernel_model/README.md, "Sequence files", documents them all.

Sequence file format (one step per line, ``#`` starts a comment; sizes take K/M/G, times ns/us/ms/s;
each argument at most once)::

    host hz=250 platform=pvm      # optional, before the steps: the host it was recorded on (model's defaults)
    gap 10us                      # default gap before every following step (initially 10us)
    create_vm                     # first, and only once
    memslot slot=0 base=0 size=128M [readonly] [log_dirty]   # size=0 deletes; another base moves it;
                                                             # slot = address space << 16 | slot id
    irqchip
    pit2 [speaker_dummy]          # KVM_CREATE_PIT2: the PIT's ports on the PIO bus (after irqchip)
    coalesced_mmio addr=0xfee00000 size=4K [pio]  # KVM_REGISTER_COALESCED_MMIO: one bus registration
    ioeventfd addr=0xd0000050 len=4 [datamatch=0] [pio]
    ioeventfd_deassign addr=0xd0000050 len=4 [datamatch=0] [pio]
    irqfd gsi=5 [deassign]        # KVM_IRQFD
    gsi_routing entries=24        # KVM_SET_GSI_ROUTING: waits for a kvm->irq_srcu grace period
    enable_cap cap=121 [arg0=24]  # KVM_ENABLE_CAP; modelled for KVM_CAP_SPLIT_IRQCHIP only
    tss_addr addr=0xfffbd000      # KVM_SET_TSS_ADDR
    ioctl name=KVM_SET_IDENTITY_MAP_ADDR cost=5us   # any other ioctl: a fixed cost, "not modelled"
    vcpu id=0
    run vcpu=0 [section=3us] [period=10us]  # the vCPU enters KVM_RUN and keeps handling exits
    sleep 1ms                     # an extra pause before the next step
    destroy_vm                    # the VM fd closed after its vCPU fds: kvm_destroy_vm(); last, and
                                  # added after the last step (with the pending gap and sleep) if absent
    keep_vm                       # instead: the sequence ends with the VM open (no teardown step)

:func:`load_sequence` reads a file with bounds (:func:`read_sequence_file`); :func:`validate` is the one
check of the steps, against the model kernel, for ``model`` and ``timing`` alike.
"""

from __future__ import annotations

import errno
import random
import re
import textwrap
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from kernel_model.kvm_host import KvmIoctlError
from kernel_model.kvm_main import KvmModel
from kernel_model.ops import DEFAULT_PERIOD_NS, DEFAULT_SECTION_NS, TEARDOWN_OP, OpSpec, get_op
from kernel_model.platforms import get_platform
from kernel_model.sim import Sim
from kernel_model.variants import get_variant

DEFAULT_GAP_NS = 10_000

__all__ = ["DEFAULT_GAP_NS", "DEFAULT_PERIOD_NS", "DEFAULT_SECTION_NS", "MAX_PAUSE_NS", "MAX_STEPS",
           "MAX_VCPUS", "KEEP_VM", "SEQUENCES", "Sequence", "SequenceError", "Step", "check_bounds", "format_sequence",
           "format_step", "format_time", "load_sequence", "parse_sequence", "parse_time",
           "read_sequence_file", "step_name", "step_number", "validate", "with_gaps"]


@dataclass(frozen=True)
class Step:
    """One step: ``op`` (a name in :data:`kernel_model.ops.OPS`) with its arguments, ``gap_ns`` after
    the previous step."""

    op: str
    args: dict[str, Any] = field(default_factory=dict)
    gap_ns: int = DEFAULT_GAP_NS

    @property
    def spec(self) -> OpSpec:
        """The op's spec: everything that depends on which op this is."""
        return get_op(self.op)

    @cached_property
    def full_args(self) -> dict[str, Any]:
        """The arguments with every absent optional one at its default."""
        return self.spec.complete(self.args)

    @property
    def label(self) -> str:
        """How reports name the step, in the ioctl's terms: ``KVM_CREATE_VCPU, 0``."""
        return self.spec.label(self.full_args)

    @property
    def modelled(self) -> bool:
        """Whether the model models this step (else it is carried as a fixed cost)."""
        return self.spec.modelled(self.full_args)

    def strace(self, seconds: float, fds: dict[str, int] | None = None) -> str:
        """The step as ``strace -T`` prints it; symbolic fds (``vm``, ``vcpu0``) unless ``fds`` are given."""
        return self.spec.strace(self.full_args, seconds, fds)


@dataclass(frozen=True)
class Sequence:
    """A named list of steps; ``hz`` and ``platform``: the host it was recorded on, when a file says
    (``host hz=250 platform=pvm``, written by ``minivmm trace``), else None. It ends with the VM's
    teardown (``destroy_vm``) unless it keeps its VM."""

    name: str
    description: str
    steps: tuple[Step, ...]
    hz: int | None = None
    platform: str | None = None

    @property
    def destroys_vm(self) -> bool:
        """Whether the last step is the teardown (``destroy_vm``)."""
        return bool(self.steps) and self.steps[-1].op == TEARDOWN_OP

    def setup_steps(self) -> tuple[Step, ...]:
        """The steps before the teardown (all of them when the sequence keeps its VM)."""
        return self.steps[:-1] if self.destroys_vm else self.steps


class SequenceError(ValueError):
    """A sequence cannot be used: unreadable or malformed (the message names the line) or refused by the
    model kernel (the message names the step). One line, never quoting a file it could not parse."""


def _virtio_mmio_notifies(n: int, gap_ns: int = DEFAULT_GAP_NS) -> list[Step]:
    """``n`` virtio-mmio QUEUE_NOTIFY ioeventfds, two queues per device, as Firecracker places them."""
    return [Step("ioeventfd", {"addr": 0xD0000000 + (i // 2) * 0x1000 + 0x50, "len": 4, "datamatch": i % 2},
                 gap_ns) for i in range(n)]


RAM = 128 << 20


def _torn_down(*steps: Step) -> tuple[Step, ...]:
    """The steps, then the VM's teardown right after the last one: the named sequences' ending."""
    return (*steps, Step(TEARDOWN_OP))

SEQUENCES: dict[str, Sequence] = {s.name: s for s in (
    Sequence("firecracker",
             "Firecracker's order: guest memory, then the irqchip and the virtio-mmio ioeventfds, then the "
             "vCPUs and the first KVM_RUN. On VMX the stall lands in KVM_CREATE_VCPU 0.",
             _torn_down(Step("create_vm"), Step("memslot", {"slot": 0, "base": 0, "size": RAM}), Step("irqchip"),
                        *_virtio_mmio_notifies(6), Step("vcpu", {"id": 0}), Step("vcpu", {"id": 1}),
                        Step("run", {"vcpu": 0, "section": DEFAULT_SECTION_NS, "period": DEFAULT_PERIOD_NS}))),
    Sequence("registrations-first",
             "Device registrations before the first memslot: the stall lands in the first "
             "KVM_SET_USER_MEMORY_REGION (where it shows on hosts without an APIC-access-page memslot).",
             _torn_down(Step("create_vm"), Step("irqchip"), *_virtio_mmio_notifies(6),
                        Step("memslot", {"slot": 0, "base": 0, "size": RAM}), Step("vcpu", {"id": 0}),
                        Step("vcpu", {"id": 1}))),
    Sequence("arm64-order",
             "vCPUs first, then the device registrations, then a memslot change (arm64 VMMs): the "
             "created_vcpus fix does not help here. (No irqchip step: x86 refuses KVM_CREATE_IRQCHIP "
             "once vCPUs exist.)",
             _torn_down(Step("create_vm"), Step("vcpu", {"id": 0}), Step("vcpu", {"id": 1}),
                        *_virtio_mmio_notifies(6), Step("memslot", {"slot": 0, "base": 0, "size": RAM}))),
    Sequence("late-registration",
             "Registrations while vCPU 0 runs a guest (a VMM that registers devices during guest boot): "
             "readers are active, which is what the per-registration synchronize paid for.",
             _torn_down(Step("create_vm"), Step("memslot", {"slot": 0, "base": 0, "size": RAM}), Step("irqchip"),
                        Step("vcpu", {"id": 0}),
                        Step("run", {"vcpu": 0, "section": DEFAULT_SECTION_NS, "period": DEFAULT_PERIOD_NS}),
                        *_virtio_mmio_notifies(6, gap_ns=200_000),
                        Step("memslot", {"slot": 1, "base": 0x100000000, "size": 2 << 20}))),
    Sequence("churn",
             "One short-lived microVM, Firecracker's set-up with one vCPU and no guest run: guest memory, the "
             "irqchip and the virtio-mmio ioeventfds, the vCPU, then the teardown. `minivmm timing --churn` "
             "repeats it back to back: where the set-up leaves a call_srcu() grace period pending, the "
             "teardown's srcu_barrier() waits for it and its callbacks.",
             _torn_down(Step("create_vm"), Step("memslot", {"slot": 0, "base": 0, "size": RAM}), Step("irqchip"),
                        *_virtio_mmio_notifies(6), Step("vcpu", {"id": 0}))),
    Sequence("deregistrations-running",
             "Register and, 12 ms later (the registration's own grace period is over), deregister six "
             "ioeventfds while vCPU 0 runs a guest that exits on every loop: each deregistration's "
             "kvm_io_bus_unregister_dev() pays synchronize_srcu_expedited() against the vCPU's readers, "
             "in every variant. Measures the expedited grace period with active readers.",
             _torn_down(Step("create_vm"), Step("memslot", {"slot": 0, "base": 0, "size": RAM}), Step("irqchip"),
                        Step("vcpu", {"id": 0}),
                        Step("run", {"vcpu": 0, "section": DEFAULT_SECTION_NS, "period": DEFAULT_PERIOD_NS}),
                        *(step for n in _virtio_mmio_notifies(6, gap_ns=200_000)
                          for step in (n, Step("ioeventfd_deassign", n.args, 12_000_000))))),
)}


def step_number(index: int) -> int:
    """The one numbering of set-up steps, in every report, ``--json`` document and metric: steps are
    numbered from 1 in sequence order, so step 1 is always ``create_vm`` (KVM_CREATE_VM). ``index`` is
    the step's 0-based position in ``Sequence.steps``. (``minivmm trace`` shows a traced ioctl's own
    index beside the step number, as ``ioctl #N``.)"""
    return index + 1


def step_name(index: int, label: str) -> str:
    """How a report names the step at ``index``: ``#9 KVM_SET_USER_MEMORY_REGION, slot 0``."""
    return f"#{step_number(index)} {label}"


_SIZE = re.compile(r"^(0x[0-9a-fA-F]+|\d+)([KMG]?)$", re.I)
_TIME = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|ms|s)$")
_TIME_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_NAME = re.compile(r"^KVM_[A-Z0-9_]+$")
#: What an op name looks like; any other first word is not quoted back in an error.
_OP_WORD = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


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


def _parse_int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer (examples: 12, 0x1f)") from None


def _parse_name(text: str) -> str:
    if not _NAME.match(text):
        raise ValueError(f"{text!r} is not an ioctl name (example: KVM_SET_TSS_ADDR)")
    return text


_PARSERS = {"int": _parse_int, "size": _parse_size, "time": parse_time, "name": _parse_name}


def _parse_step(op: str, words: list[str]) -> dict[str, Any]:
    """The arguments of one ``op`` line, checked by the op's spec."""
    spec = get_op(op)
    args: dict[str, Any] = {}
    for word in words:
        key, sep, value = word.partition("=")
        arg = spec.arg(key)
        if arg is None:
            raise ValueError(f"{op} takes no argument {key!r}")
        if key in args:
            raise ValueError(f"{key} given twice")
        if arg.kind == "flag":
            if sep:
                raise ValueError(f"{key} is a flag: write it without a value")
            args[key] = True
        elif not sep:
            raise ValueError(f"{key} needs a value ({key}=...)")
        else:
            args[key] = _PARSERS[arg.kind](value)
    return spec.complete(args)


#: The directive by which a sequence file keeps its VM open at the end: no teardown step is added.
KEEP_VM = "keep_vm"


def parse_sequence(text: str, name: str = "file") -> Sequence:
    """Parse a sequence file (see the module docstring); SequenceError names the bad line.

    The sequence ends with the VM's teardown: a ``destroy_vm`` line, which must be the last step, or
    else one added after the last step (its gap the default gap then in force plus any ``sleep``
    after the last step); a ``keep_vm`` line says the sequence keeps its VM instead."""
    reader = _SequenceReader()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        try:
            reader.read(words[0], words[1:], lineno)
        except ValueError as e:
            raise SequenceError(f"{name}:{lineno}: {e}") from None
    steps = reader.steps
    if not steps:
        raise SequenceError(f"{name}: no steps")
    if steps[0].op != "create_vm":
        raise SequenceError(f"{name}: the first step must be create_vm")
    if any(s.op == "create_vm" for s in steps[1:]):
        raise SequenceError(f"{name}: only one create_vm per sequence")
    if not reader.keep_line and steps[-1].op != TEARDOWN_OP:
        steps.append(Step(TEARDOWN_OP, {}, reader.gap + reader.extra))
    return Sequence(name, f"from {name}", tuple(steps), reader.host.get("hz"), reader.host.get("platform"))


class _SequenceReader:
    """What :func:`parse_sequence` has read so far: the steps, the ``gap`` in force, the ``sleep`` time
    waiting for the next step, the ``host`` line and the line of ``keep_vm`` (0: none)."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.gap = DEFAULT_GAP_NS
        self.extra = 0
        self.host: dict[str, Any] = {}
        self.keep_line = 0

    def read(self, op: str, rest: list[str], lineno: int) -> None:
        """One line, a directive or a step; ValueError says what is wrong with it."""
        if op == "host":
            if self.steps or self.host:
                raise ValueError("'host' comes once, before the first step")
            self.host = _parse_host(rest)
            return
        if self.steps and self.steps[-1].op == TEARDOWN_OP:
            raise ValueError(f"{TEARDOWN_OP} ends the sequence: nothing may follow it")
        if op == KEEP_VM:
            if rest:
                raise ValueError(f"'{KEEP_VM}' takes no argument")
            if self.keep_line:
                raise ValueError(f"'{KEEP_VM}' given twice")
            self.keep_line = lineno
        elif op in ("gap", "sleep"):
            if len(rest) != 1:
                raise ValueError(f"'{op}' takes one duration")
            if op == "gap":
                self.gap = parse_time(rest[0])
            else:
                self.extra += parse_time(rest[0])
        else:
            self.step(op, rest)

    def step(self, op: str, rest: list[str]) -> None:
        """A step line: the op and its arguments, after the gap in force and any sleeps."""
        if op == TEARDOWN_OP and self.keep_line:
            raise ValueError(f"{TEARDOWN_OP} in a sequence that says {KEEP_VM} (line {self.keep_line})")
        if not _OP_WORD.match(op):
            # Not an op name: say so without quoting the line (it may not be a sequence file at
            # all, e.g. --sequence /etc/shadow).
            raise ValueError("not a step: a line starts with an op name (create_vm, memslot, ...)")
        self.steps.append(Step(op, _parse_step(op, rest), self.gap + self.extra))
        self.extra = 0


def _parse_host(words: list[str]) -> dict[str, Any]:
    """``host hz=250 platform=pvm``: the HZ and platform of the host a sequence was recorded on."""
    out: dict[str, Any] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if key not in ("hz", "platform") or not sep or key in out:
            raise ValueError("'host' takes hz=N and platform=NAME, once each")
        if key == "hz":
            hz = _parse_int(value)
            if not 1 <= hz <= 10000:
                raise ValueError(f"hz={hz} is out of range: it must be 1 to 10000")
            out[key] = hz
        else:
            get_platform(value)  # a ValueError naming the known platforms
            out[key] = value
    return out


def format_time(ns: int) -> str:
    """A duration as the file format writes it, exactly: ``10us``, ``1500ns``, ``2ms``."""
    for unit, scale in (("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)):
        if ns and ns % scale == 0:
            return f"{ns // scale}{unit}"
    return f"{ns}ns"


def _format_value(kind: str, value: Any) -> str:
    if kind == "time":
        return format_time(value)
    if kind == "size":
        for suffix, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
            if value and value % scale == 0:
                return f"{value // scale}{suffix}"
        return hex(value) if value >= 0x1000 else str(value)
    if kind == "int":
        return hex(value) if value >= 0x1000 else str(value)
    return str(value)


def format_step(step: Step) -> str:
    """One step as a line of a sequence file (its gap is written by :func:`format_sequence`); optional
    arguments at their defaults are left out."""
    spec = step.spec
    words = [step.op]
    for arg in spec.args:
        value = step.full_args[arg.name]
        if arg.kind == "flag":
            if value:
                words.append(arg.name)
        elif arg.required or (value is not None and value != arg.default):
            words.append(f"{arg.name}={_format_value(arg.kind, value)}")
    return " ".join(words)


def format_sequence(seq: Sequence) -> str:
    """The sequence in the file format: ``parse_sequence(format_sequence(seq))`` gives the same steps
    and gaps. A ``gap`` line is written wherever the gap before a step changes; a sequence that does
    not end with the teardown says ``keep_vm`` (read back, it gets none added)."""
    lines = textwrap.wrap(f"{seq.name}: {seq.description}", 78, initial_indent="# ", subsequent_indent="# ")
    if not seq.destroys_vm:
        lines.append(f"{KEEP_VM}  # the VM stays open at the end: no {TEARDOWN_OP} step")
    gap = DEFAULT_GAP_NS
    for step in seq.steps:
        if step.gap_ns != gap:
            gap = step.gap_ns
            lines.append(f"gap {format_time(gap)}")
        lines.append(format_step(step))
    return "\n".join(lines) + "\n"


#: The model's input bounds. A run's cost grows linearly with its steps (scripts/bench_model.py) and not
#: with its simulated time; these keep a prediction within minutes and say so in one line.
#: Steps per sequence: a traced QEMU set-up is 230-460.
MAX_STEPS = 50_000
#: vCPUs per sequence (each running one costs every grace-period scan a look); x86 KVM allows 4096.
MAX_VCPUS = 1024
#: Simulated time spent in pauses (``gap``, ``sleep`` and ``ioctl cost=``), in all: one hour.
MAX_PAUSE_NS = 3600 * 1_000_000_000


def check_bounds(seq: Sequence) -> None:
    """SequenceError (one line) if ``seq`` is past one of the model's input bounds."""
    if len(seq.steps) > MAX_STEPS:
        raise SequenceError(f"sequence {seq.name}: {len(seq.steps)} steps; the model takes at most {MAX_STEPS}")
    if sum(s.op == "vcpu" for s in seq.steps) > MAX_VCPUS:
        raise SequenceError(f"sequence {seq.name}: more than {MAX_VCPUS} vCPUs; the model takes at most {MAX_VCPUS}")
    if sum(s.gap_ns for s in seq.steps) + sum(s.args.get("cost", 0) for s in seq.steps if s.op == "ioctl") \
            > MAX_PAUSE_NS:
        raise SequenceError(f"sequence {seq.name}: its pauses add up to more than {MAX_PAUSE_NS // 10**9} s, "
                            "the model's bound")


#: The variant, HZ and tick phase of the dry run ``validate`` does: what the kernel refuses does not
#: depend on them (only on the platform).
_VALIDATE_VARIANT, _VALIDATE_HZ = "call_srcu", 250


def validate(seq: Sequence, platform: str) -> None:
    """The one check of a sequence, for ``minivmm model`` and ``minivmm timing`` alike: issue it once
    against the model kernel on ``platform``; a step the kernel would refuse (its errno: EEXIST for a
    duplicate ioeventfd or overlapping memslots, ENOENT for a deassign of nothing, EINVAL for a memslot
    size that is not a page multiple, ...) or that cannot be issued as written (a ``run`` before its
    vCPU, or with no memory where its guest runs) raises SequenceError naming the step."""
    if not seq.steps or seq.steps[0].op != "create_vm":
        raise SequenceError(f"sequence {seq.name}: the first step must be create_vm")
    check_bounds(seq)
    if any(s.op == TEARDOWN_OP for s in seq.steps[:-1]):
        raise SequenceError(f"sequence {seq.name}: {TEARDOWN_OP} must be the last step")
    sim = Sim(_VALIDATE_HZ, 0.0)
    kvm = KvmModel(sim, get_variant(_VALIDATE_VARIANT), get_platform(platform))
    rng = random.Random(0)
    for i, step in enumerate(seq.steps):
        sim.pause(step.gap_ns)
        try:
            step.spec.model(kvm, step.full_args, rng)
        except KvmIoctlError as e:
            name = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "an error"
            raise SequenceError(f"sequence {seq.name}: step {step_number(i)} ({step.label}) is refused by the kernel: "
                                f"{e.strerror} ({name})") from None
        except ValueError as e:
            raise SequenceError(f"sequence {seq.name}: step {step_number(i)} ({step.label}) cannot be issued: "
                                f"{e}") from None
    if kvm.vcpu_readers:
        kvm.stop_vcpus()


def read_sequence_file(path: str) -> str:
    """The text of a sequence file, read by the one file reader (:func:`minivmm.files.read_text`):
    opened non-blocking (a FIFO cannot hang it), regular files only (not /dev/zero, a directory or a
    socket), at most :data:`minivmm.files.SEQUENCE_FILE_MAX` bytes, UTF-8. SequenceError says what is
    wrong in one line and never quotes the file's content."""
    from minivmm.files import SEQUENCE_FILE_MAX, FileRefused, read_text

    try:
        return read_text(path, "sequence file", SEQUENCE_FILE_MAX)
    except FileRefused as e:
        if e.missing:
            raise SequenceError(f"{path!r} is neither a named sequence ({', '.join(SEQUENCES)}) "
                                "nor an existing file") from None
        raise SequenceError(str(e)) from None


def load_sequence(name_or_path: str) -> Sequence:
    """A named sequence, or a sequence file (read by :func:`read_sequence_file`). SequenceError says
    what is wrong; :func:`validate` then checks the steps against the model kernel."""
    if name_or_path in SEQUENCES:
        return SEQUENCES[name_or_path]
    return parse_sequence(read_sequence_file(name_or_path), name_or_path)


def with_gaps(seq: Sequence, gaps_ns: list[int] | None) -> Sequence:
    """The same sequence with the given gap before each step (e.g. gaps measured on a real run)."""
    if gaps_ns is None:
        return seq
    if len(gaps_ns) != len(seq.steps):
        raise ValueError("one gap per step is needed")
    return replace(seq, steps=tuple(Step(s.op, s.args, g) for s, g in zip(seq.steps, gaps_ns)))
