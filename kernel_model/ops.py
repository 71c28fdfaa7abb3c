"""One spec per sequence op: its arguments, checks, label, the ioctl it issues (and so its strace form),
how a traced ioctl maps back to it, and how the model runs it.

A sequence step (:class:`kernel_model.sequences.Step`) names its op; everything that depends on which
op it is lives in that op's :class:`OpSpec` here, in ``OPS``. The host side (``minivmm timing``
issuing the real ioctl) only registers how to issue each op, in ``minivmm.timing.host_ops``, keyed by
the same names; a test checks that every op has a host issuer, and another that, on real KVM, what
the host issues maps back through :attr:`OpSpec.from_traced` to the same arguments.

Adding an op: one ``OpSpec`` below (arguments, label, ``ioctl`` or ``close``, ``from_traced``,
``model``, ``c``), added to ``OPS``; its host issuer in ``minivmm/timing/host_ops.py``; a row in
kernel_model/README.md ("Sequence files"); a line in the format sketch of :mod:`kernel_model.sequences`.

What each op does in the model, and the file format, are documented in kernel_model/README.md
("Sequence files").
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from kernel_model import kvm_uapi
from kernel_model.csource import CEmitter, CNames, CStep, c_call, c_close, c_hex, c_ioctl
from kernel_model.kvm_host import KVM_CAP_SPLIT_IRQCHIP, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY
from kernel_model.kvm_main import KvmModel
from kernel_model.kvm_uapi import UapiStruct

#: The arguments of one step, by name, after parsing (ints, bools, names).
Args = Mapping[str, Any]

#: How an argument's value is written in a sequence file.
#: int: 12, 0x1f; size: 128M, 0x1000, 4K; time: 10us, 1.5ms; flag: present or absent; name: KVM_X.
ArgKind = Literal["int", "size", "time", "flag", "name"]

DEFAULT_SECTION_NS = 3_000
DEFAULT_PERIOD_NS = 10_000

#: Where the ``run`` op's guest lives: a vCPU entering KVM_RUN runs a loop at this guest-physical
#: address (real mode), so a memslot must cover it. The host's runner loads its loop there.
LOOP_ADDR = 0x1000
#: The length of that loop (mov dx, 0x80; out dx, al; jmp $-3).
LOOP_LEN = 6


class StepRefused(ValueError):
    """A step that cannot be issued as written, for a reason that is not the kernel's errno (e.g. a
    ``run`` with no memory where its guest runs)."""


@dataclass(frozen=True)
class Arg:
    """One argument of an op: ``name=value`` (or a bare ``name`` for a flag) in a sequence file."""

    name: str
    kind: ArgKind
    required: bool = False
    #: The value a step gets when the argument is absent (flags: False).
    default: Any = None
    doc: str = ""
    #: Whether the ioctl carries it, so that a trace gives it back (``run``'s read sections describe
    #: the guest, not the ioctl: a traced ``run`` gets the defaults).
    traced: bool = True


class StructArg(NamedTuple):
    """An ioctl argument that is a struct: which one, and its field values (absent or None: not known
    here, e.g. an fd or a host address in the model)."""

    struct: UapiStruct
    values: Mapping[str, Any]


class IoctlCall(NamedTuple):
    """The ioctl an op issues: on which fd (its role: ``system``, ``vm``, ``vcpuN``, as the tracer names
    fds), the request's name, and its argument: a value, a struct, or None when it is not known."""

    role: str
    request: str
    arg: int | StructArg | None

    def arg_text(self) -> str:
        """The argument as strace prints it (structs through :meth:`kvm_uapi.UapiStruct.format`)."""
        if isinstance(self.arg, StructArg):
            return self.arg.struct.format(self.arg.values)
        return "..." if self.arg is None else str(self.arg)


class CloseCall(NamedTuple):
    """The close() an op issues instead of an ioctl: of the fd with role ``role`` (``vm``), once the fds
    whose roles start with one of ``after`` (``vcpu``: every vCPU fd) are closed, untimed. Printed as
    strace prints it."""

    role: str
    after: tuple[str, ...] = ()

    def strace(self, seconds: float, fds: Mapping[str, int] | None = None) -> str:
        """``close(vm) = 0 <0.014120>``, or with the real fd number when ``fds`` has it."""
        return f"close({(fds or {}).get(self.role, self.role)}) = 0 <{seconds:.6f}>"


class TracedIoctl(NamedTuple):
    """One traced ioctl, as plain values (the model cannot import the tracer): the request's name, its
    raw argument (the value, for requests that take one), the fields of its argument struct as read
    (at least every field of its :mod:`kernel_model.kvm_uapi` struct; empty for requests without one,
    ``{"unreadable": True}`` when the tracer could not read it), the fd's role, and whether it is a
    vCPU's first KVM_RUN that returned."""

    request: str
    arg: int
    fields: Mapping[str, Any]
    role: str
    first_run: bool = False

    def struct_fields(self, struct: UapiStruct) -> Mapping[str, Any] | None:
        """The decoded fields if they are ``struct``'s (each of its fields read), else None."""
        needed = (f.name for f in struct.fields if f.style != "abbrev")
        return self.fields if all(name in self.fields for name in needed) else None


def _no_check(a: Args) -> None:
    """Ops whose arguments need no check beyond their kinds."""


def _always(a: Args) -> bool:
    return True


@dataclass(frozen=True)
class OpSpec:
    """Everything about one op. Plain data: the functions are small and named below.

    ``ioctl`` is the one description of what the op issues: the strace form is printed from it, and
    ``minivmm repro`` writes each op's C call from the same request and struct values, with what the
    call needs first (an eventfd, guest memory) from ``c``. The teardown op issues no ioctl: its
    ``ioctl`` is None and ``close`` says which fd it closes (the VM's, after its vCPUs'), and its C is
    that close's (:func:`kernel_model.csource.c_close`); exactly one of ``ioctl`` and ``close`` is set."""

    name: str
    #: What the op is in the kernel's terms (for the documentation).
    doc: str
    args: tuple[Arg, ...]
    #: The requests a traced ioctl of this op has (``from_traced`` is asked only about these).
    requests: tuple[str, ...]
    #: How reports name a step: ``KVM_CREATE_VCPU, 0``.
    label: Callable[[Args], str]
    #: The ioctl the step issues, with its argument (what the host issues, as far as the model knows);
    #: None for the op that closes an fd instead (``close``).
    ioctl: Callable[[Args], IoctlCall] | None
    #: The inverse of ``ioctl``: the op's arguments from a traced ioctl of one of ``requests``, or None
    #: when that ioctl is not this op. None: no traced ioctl becomes this op.
    from_traced: Callable[[TracedIoctl], dict[str, Any] | None] | None
    #: Issue the step against the model (the caller times it).
    model: Callable[[KvmModel, Args, random.Random], None]
    #: Checks of one step's own arguments (cross-step rules are the model kernel's: see
    #: ``sequences.validate``). Raises ValueError with a message for the user.
    check: Callable[[Args], None] = _no_check
    #: Whether the model models this step (False: carried as a fixed cost, and reports say so).
    modelled: Callable[[Args], bool] = field(default=_always)
    #: The step as C, for ``minivmm repro``: the call ``ioctl`` describes, with what it needs first
    #: (kernel_model.csource). Every op that issues an ioctl has one (a test checks); the teardown's C is
    #: its close's (:meth:`c_step`).
    c: CEmitter | None = None
    #: The close() the step issues when it issues no ioctl (``destroy_vm``).
    close: Callable[[Args], CloseCall] | None = None

    def __post_init__(self) -> None:
        if (self.ioctl is None) == (self.close is None):
            raise ValueError(f"op {self.name}: exactly one of ioctl and close describes what it issues")

    def c_step(self, a: Args, names: CNames) -> CStep:
        """The step as C (``minivmm repro``): its emitter's for an ioctl, its close's for the teardown.
        LookupError for an op that has no emitter."""
        if self.close is not None:
            return c_close(self.close(a), names)
        if self.c is None or self.ioctl is None:
            raise LookupError(f"the op {self.name!r} has no C emitter (OpSpec.c)")
        return self.c(a, self.ioctl(a), names)

    def strace(self, a: Args, seconds: float, fds: Mapping[str, int] | None = None) -> str:
        """The call as ``strace -T`` prints it; symbolic fds (``vm``, ``vcpu0``) unless ``fds`` has them."""
        if self.close is not None:
            return self.close(a).strace(seconds, fds)
        assert self.ioctl is not None
        call = self.ioctl(a)
        fd = (fds or {}).get(call.role, call.role)
        return f"ioctl({fd}, {call.request}, {call.arg_text()}) = 0 <{seconds:.6f}>"

    def arg(self, name: str) -> Arg | None:
        """The argument called ``name``, or None."""
        return next((a for a in self.args if a.name == name), None)

    def complete(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` with every absent argument at its default; ValueError names missing or unknown ones."""
        unknown = [k for k in given if self.arg(k) is None]
        if unknown:
            raise ValueError(f"{self.name} takes no argument {unknown[0]!r}")
        missing = [a.name for a in self.args if a.required and a.name not in given]
        if missing:
            raise ValueError(f"{self.name} needs {', '.join(sorted(missing))}")
        out = {a.name: (False if a.kind == "flag" else a.default) for a in self.args if not a.required}
        out.update(given)
        self.check(out)
        return out


# --- create_vm --------------------------------------------------------------------------------------

def _create_vm_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.sim.spend(kvm.costs.create_vm)


CREATE_VM = OpSpec(
    "create_vm", "KVM_CREATE_VM: the VM (kvm_create_vm()); its fixed cost only.", (),
    requests=("KVM_CREATE_VM",),
    label=lambda a: "KVM_CREATE_VM",
    ioctl=lambda a: IoctlCall("system", "KVM_CREATE_VM", 0),
    from_traced=lambda t: {},
    model=_create_vm_model, c=lambda a, call, names: c_call(call, names, after=("vm->vm_fd = ret;",)))


# --- memslot ---------------------------------------------------------------------------------------

def _slot_name(slot: int) -> str:
    """``3``, or ``1:3`` for slot 3 of address space 1 (the high 16 bits of KVM's slot number)."""
    return f"{slot >> 16}:{slot & 0xFFFF}" if slot >> 16 else str(slot)


def _memslot_flags(a: Args) -> int:
    return (KVM_MEM_READONLY if a["readonly"] else 0) | (KVM_MEM_LOG_DIRTY_PAGES if a["log_dirty"] else 0)


def _memslot_label(a: Args) -> str:
    return f"KVM_SET_USER_MEMORY_REGION, slot {_slot_name(a['slot'])}" + (" (delete)" if a["size"] == 0 else "")


def _memslot_ioctl(a: Args) -> IoctlCall:
    return IoctlCall("vm", "KVM_SET_USER_MEMORY_REGION", StructArg(kvm_uapi.USER_MEMORY_REGION, {
        "slot": a["slot"], "flags": _memslot_flags(a), "guest_phys_addr": a["base"], "memory_size": a["size"]}))


def _memslot_from_traced(t: TracedIoctl) -> dict[str, Any] | None:
    f = t.struct_fields(kvm_uapi.USER_MEMORY_REGION)
    if f is None:
        return None
    s = kvm_uapi.USER_MEMORY_REGION
    return {"slot": f["slot"], "base": f["guest_phys_addr"], "size": f["memory_size"],
            "readonly": s.has(f, "KVM_MEM_READONLY"), "log_dirty": s.has(f, "KVM_MEM_LOG_DIRTY_PAGES")}


def _memslot_check(a: Args) -> None:
    if not 0 <= a["slot"] < 1 << 32:
        raise ValueError("slot is a 32-bit number (address space << 16 | slot id)")


def _memslot_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.set_user_memory_region(a["slot"], a["base"], a["size"], _memslot_flags(a))


def _memslot_c(a: Args, call: IoctlCall, names: CNames) -> CStep:
    slot, base, size = a["slot"], a["base"], a["size"]
    if size == 0:
        names.slots.pop(slot, None)
        return c_call(call, names, {"userspace_addr": "0"})
    index, mapped = names.slots.get(slot, (-1, 0))
    if mapped != size:  # a new slot, or one resized: new memory (a move keeps the slot's own, as KVM requires)
        index = names.new_memory()
        host = f"(__u64)(uintptr_t)map_memory(vm, {index}, {c_hex(size)})"
    else:
        host = f"(__u64)(uintptr_t)vm->mem[{index}]"
    names.slots[slot] = (index, size)
    # The run op's guest loop, at LOOP_ADDR wherever this slot puts it (as the host step does).
    if not base <= LOOP_ADDR <= base + size - LOOP_LEN:
        return c_call(call, names, {"userspace_addr": host}, needs=("memory",))
    where = f"(char *)vm->mem[{index}] + " + (f"(LOOP_ADDR - {c_hex(base)})" if base else "LOOP_ADDR")
    return c_call(call, names, {"userspace_addr": host}, (f"load_loop_guest({where});",),
                  needs=("memory", "loop_guest"))


MEMSLOT = OpSpec(
    "memslot", "KVM_SET_USER_MEMORY_REGION (or ..._REGION2): create (one memslot swap: "
    "synchronize_srcu_expedited(&kvm->srcu)), move or delete (two), change log_dirty alone (one), or "
    "leave unchanged (none) a memslot; size=0 deletes. slot carries the address space in its high 16 bits.",
    (Arg("slot", "int", True, doc="KVM's slot number: address space << 16 | slot id"),
     Arg("base", "size", True, doc="guest-physical address"), Arg("size", "size", True, doc="0 deletes"),
     Arg("readonly", "flag", doc="KVM_MEM_READONLY"), Arg("log_dirty", "flag", doc="KVM_MEM_LOG_DIRTY_PAGES")),
    requests=("KVM_SET_USER_MEMORY_REGION", "KVM_SET_USER_MEMORY_REGION2"),
    label=_memslot_label, ioctl=_memslot_ioctl, from_traced=_memslot_from_traced, model=_memslot_model,
    check=_memslot_check, c=_memslot_c)


# --- irqchip ----------------------------------------------------------------------------------------

def _irqchip_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.create_irqchip()


IRQCHIP = OpSpec(
    "irqchip", "KVM_CREATE_IRQCHIP: registers the platform's interrupt controllers on the io buses.", (),
    requests=("KVM_CREATE_IRQCHIP",),
    label=lambda a: "KVM_CREATE_IRQCHIP",
    ioctl=lambda a: IoctlCall("vm", "KVM_CREATE_IRQCHIP", 0),
    from_traced=lambda t: {},
    model=_irqchip_model, c=c_ioctl)


# --- ioeventfd, ioeventfd_deassign ------------------------------------------------------------------

_IOEVENTFD_ARGS = (Arg("addr", "int", True), Arg("len", "int", True), Arg("datamatch", "int"),
                   Arg("pio", "flag"))


def _ioeventfd_label(verb: str) -> Callable[[Args], str]:
    def label(a: Args) -> str:
        return f"KVM_IOEVENTFD{verb}, {'pio' if a['pio'] else 'mmio'} {a['addr']:#x}"
    return label


def _ioeventfd_ioctl(deassign: bool) -> Callable[[Args], IoctlCall]:
    def ioctl(a: Args) -> IoctlCall:
        s = kvm_uapi.IOEVENTFD
        flags = sum(s.flag(name).bit for name, on in (("KVM_IOEVENTFD_FLAG_DATAMATCH", a["datamatch"] is not None),
                                                      ("KVM_IOEVENTFD_FLAG_PIO", a["pio"]),
                                                      ("KVM_IOEVENTFD_FLAG_DEASSIGN", deassign)) if on)
        return IoctlCall("vm", "KVM_IOEVENTFD", StructArg(s, {
            "datamatch": a["datamatch"] or 0, "addr": a["addr"], "len": a["len"], "flags": flags}))
    return ioctl


def _ioeventfd_from_traced(deassign: bool) -> Callable[[TracedIoctl], dict[str, Any] | None]:
    def from_traced(t: TracedIoctl) -> dict[str, Any] | None:
        s = kvm_uapi.IOEVENTFD
        f = t.struct_fields(s)
        if f is None or s.has(f, "KVM_IOEVENTFD_FLAG_DEASSIGN") != deassign:
            return None
        return {"addr": f["addr"], "len": f["len"], "pio": s.has(f, "KVM_IOEVENTFD_FLAG_PIO"),
                "datamatch": f["datamatch"] if s.has(f, "KVM_IOEVENTFD_FLAG_DATAMATCH") else None}
    return from_traced


def _ioeventfd_c(deassign: bool) -> CEmitter:
    def c(a: Args, call: IoctlCall, names: CNames) -> CStep:
        key = (a["addr"], a["len"], a["datamatch"], bool(a["pio"]))
        if deassign:  # the eventfd its assign was given (validation guarantees one came first)
            fd = f"vm->efd[{names.ioevents.pop(key)}]"
        else:
            names.ioevents[key] = efd = names.new_eventfd()
            fd = f"open_eventfd(vm, {efd})"
        return c_call(call, names, {"fd": fd}, needs=("eventfd",))
    return c


def _ioeventfd_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.ioeventfd(a["addr"], a["len"], a["datamatch"], a["pio"])


def _ioeventfd_deassign_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.ioeventfd_deassign(a["addr"], a["len"], a["datamatch"], a["pio"])


IOEVENTFD = OpSpec(
    "ioeventfd", "KVM_IOEVENTFD (assign): registers the ioeventfd on the MMIO or PIO bus "
    "(kvm_io_bus_register_dev(): the old bus is freed by the variant's rule).",
    _IOEVENTFD_ARGS, requests=("KVM_IOEVENTFD",), label=_ioeventfd_label(""), ioctl=_ioeventfd_ioctl(False),
    from_traced=_ioeventfd_from_traced(False), model=_ioeventfd_model, c=_ioeventfd_c(False))

IOEVENTFD_DEASSIGN = OpSpec(
    "ioeventfd_deassign", "KVM_IOEVENTFD with DEASSIGN: kvm_io_bus_unregister_dev(), which waits for "
    "an expedited grace period in every variant; the same arguments as the assign.",
    _IOEVENTFD_ARGS, requests=("KVM_IOEVENTFD",), label=_ioeventfd_label(" deassign"),
    ioctl=_ioeventfd_ioctl(True), from_traced=_ioeventfd_from_traced(True), model=_ioeventfd_deassign_model,
    c=_ioeventfd_c(True))


# --- vcpu -------------------------------------------------------------------------------------------

def _vcpu_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.create_vcpu(a["id"])


def _vcpu_c(a: Args, call: IoctlCall, names: CNames) -> CStep:
    return c_call(call, names, after=(f"vm->vcpu_fd[{names.vcpu(a['id'])}] = ret;",))


VCPU = OpSpec(
    "vcpu", "KVM_CREATE_VCPU: on VMX with an in-kernel LAPIC the first one installs the APIC-access "
    "page memslot (one memslot swap); on x86 without one, the first one enables the kvm_has_noapic_vcpu "
    "static key (a kernel code patch).", (Arg("id", "int", True),),
    requests=("KVM_CREATE_VCPU",),
    label=lambda a: f"KVM_CREATE_VCPU, {a['id']}",
    ioctl=lambda a: IoctlCall("vm", "KVM_CREATE_VCPU", a["id"]),
    from_traced=lambda t: {"id": t.arg},
    model=_vcpu_model, c=_vcpu_c)


# --- run --------------------------------------------------------------------------------------------

def _run_check(a: Args) -> None:
    if not 0 < a["section"] < a["period"]:
        raise ValueError("run needs 0 < section < period")


def _run_from_traced(t: TracedIoctl) -> dict[str, Any] | None:
    # Only a vCPU's first entry of the first VM is a step (vm1.vcpu0 is another VM's; later entries
    # are the guest running).
    if not (t.first_run and t.role.startswith("vcpu") and t.role[4:].isdigit()):
        return None
    return {"vcpu": int(t.role[4:])}


def _run_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    # The kernel's own refusals (a vCPU never created) come first; then the guest loop's memory.
    if a["vcpu"] in kvm.vcpu_ids and not kvm.memory_covers(LOOP_ADDR, LOOP_LEN):
        raise StepRefused(f"run needs a memslot covering {LOOP_ADDR:#x} (where the vCPU's guest loop runs)")
    kvm.run_vcpu(a["vcpu"], a["section"], a["period"], offset_ns=int(rng.random() * a["period"]))


def _run_c(a: Args, call: IoctlCall, names: CNames) -> CStep:
    # Set up (and made runnable: no INIT or SIPI comes) before the gap, then timed in its own thread, which
    # re-enters KVM_RUN every period at most; section is KVM's own work on each exit.
    index = names.vcpu(a["vcpu"])
    return CStep(names.fd(call.role), call.request, "0", (f"prepare_vcpu(vm, {index}, {a['period']});",),
                 timed_by=f"first_run(vm, {index})", needs=("vcpu_thread",))


RUN = OpSpec(
    "run", "The vCPU's first KVM_RUN: from then on it handles an exit every `period`, each inside an SRCU "
    "read section of `section` (its guest is a loop at 0x1000, so a memslot must cover that address).",
    (Arg("vcpu", "int", True), Arg("section", "time", default=DEFAULT_SECTION_NS, traced=False),
     Arg("period", "time", default=DEFAULT_PERIOD_NS, traced=False)),
    requests=("KVM_RUN",),
    label=lambda a: f"KVM_RUN, vcpu {a['vcpu']} (first entry)",
    ioctl=lambda a: IoctlCall(f"vcpu{a['vcpu']}", "KVM_RUN", 0),
    from_traced=_run_from_traced,
    model=_run_model, check=_run_check, c=_run_c)


# --- pit2 -------------------------------------------------------------------------------------------

def _pit2_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.create_pit2(a["speaker_dummy"])


def _pit2_ioctl(a: Args) -> IoctlCall:
    s = kvm_uapi.PIT_CONFIG
    return IoctlCall("vm", "KVM_CREATE_PIT2", StructArg(s, {
        "flags": s.flag("KVM_PIT_SPEAKER_DUMMY").bit if a["speaker_dummy"] else 0}))


def _pit2_from_traced(t: TracedIoctl) -> dict[str, Any] | None:
    f = t.struct_fields(kvm_uapi.PIT_CONFIG)
    return None if f is None else {"speaker_dummy": kvm_uapi.PIT_CONFIG.has(f, "KVM_PIT_SPEAKER_DUMMY")}


PIT2 = OpSpec(
    "pit2", "KVM_CREATE_PIT2 (x86, after KVM_CREATE_IRQCHIP): registers the PIT's ports 0x40-0x43 on the "
    "PIO bus, and the speaker port 0x61 with speaker_dummy: kvm_io_bus_register_dev() each.",
    (Arg("speaker_dummy", "flag", doc="KVM_PIT_SPEAKER_DUMMY"),),
    requests=("KVM_CREATE_PIT2",), label=lambda a: "KVM_CREATE_PIT2", ioctl=_pit2_ioctl,
    from_traced=_pit2_from_traced, model=_pit2_model, c=c_ioctl)


# --- coalesced_mmio ---------------------------------------------------------------------------------

def _coalesced_mmio_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.register_coalesced_mmio(a["addr"], a["size"], a["pio"])


def _coalesced_mmio_check(a: Args) -> None:
    if a["size"] <= 0:
        raise ValueError("size must be at least 1")


def _coalesced_mmio_from_traced(t: TracedIoctl) -> dict[str, Any] | None:
    f = t.struct_fields(kvm_uapi.COALESCED_MMIO_ZONE)
    return None if f is None else {"addr": f["addr"], "size": f["size"], "pio": bool(f["pio"])}


COALESCED_MMIO = OpSpec(
    "coalesced_mmio", "KVM_REGISTER_COALESCED_MMIO: a zone whose writes are queued in the coalesced ring; "
    "one kvm_io_bus_register_dev() on the MMIO bus (the PIO bus with pio), freed by the variant's rule.",
    (Arg("addr", "int", True), Arg("size", "size", True), Arg("pio", "flag", doc="a port I/O zone")),
    requests=("KVM_REGISTER_COALESCED_MMIO",),
    label=lambda a: f"KVM_REGISTER_COALESCED_MMIO, {'pio' if a['pio'] else 'mmio'} {a['addr']:#x}",
    ioctl=lambda a: IoctlCall("vm", "KVM_REGISTER_COALESCED_MMIO", StructArg(kvm_uapi.COALESCED_MMIO_ZONE, {
        "addr": a["addr"], "size": a["size"], "pio": int(a["pio"])})),
    from_traced=_coalesced_mmio_from_traced,
    model=_coalesced_mmio_model, check=_coalesced_mmio_check, c=c_ioctl)


# --- irqfd ------------------------------------------------------------------------------------------

def _irqfd_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.irqfd(a["gsi"], a["deassign"])


def _irqfd_ioctl(a: Args) -> IoctlCall:
    s = kvm_uapi.IRQFD
    return IoctlCall("vm", "KVM_IRQFD", StructArg(s, {
        "gsi": a["gsi"], "flags": s.flag("KVM_IRQFD_FLAG_DEASSIGN").bit if a["deassign"] else 0}))


def _irqfd_from_traced(t: TracedIoctl) -> dict[str, Any] | None:
    f = t.struct_fields(kvm_uapi.IRQFD)
    return None if f is None else {"gsi": f["gsi"], "deassign": kvm_uapi.IRQFD.has(f, "KVM_IRQFD_FLAG_DEASSIGN")}


def _irqfd_c(a: Args, call: IoctlCall, names: CNames) -> CStep:
    attached = names.irqfds.setdefault(a["gsi"], [])
    if not a["deassign"]:
        efd = names.new_eventfd()
        attached.append(efd)
        fd = f"open_eventfd(vm, {efd})"
    elif attached:
        fd = f"vm->efd[{attached.pop()}]"
    else:  # a deassign that matches nothing is legal (the kernel returns 0): a fresh eventfd
        fd = f"open_eventfd(vm, {names.new_eventfd()})"
    return c_call(call, names, {"fd": fd}, needs=("eventfd",))


IRQFD = OpSpec(
    "irqfd", "KVM_IRQFD: attach (or with deassign detach) an eventfd that injects gsi. No grace period: "
    "the assign reads the routing under kvm->irq_srcu; a deassign flushes the irqfd clean-up workqueue.",
    (Arg("gsi", "int", True), Arg("deassign", "flag", doc="KVM_IRQFD_FLAG_DEASSIGN")),
    requests=("KVM_IRQFD",),
    label=lambda a: f"KVM_IRQFD{' deassign' if a['deassign'] else ''}, gsi {a['gsi']}",
    ioctl=_irqfd_ioctl, from_traced=_irqfd_from_traced, model=_irqfd_model, c=_irqfd_c)


# --- gsi_routing ------------------------------------------------------------------------------------

def _gsi_routing_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.set_gsi_routing(a["entries"])


def _gsi_routing_check(a: Args) -> None:
    if a["entries"] < 0:
        raise ValueError("entries must be 0 or more")


def _gsi_routing_from_traced(t: TracedIoctl) -> dict[str, Any] | None:
    f = t.struct_fields(kvm_uapi.IRQ_ROUTING)
    return None if f is None else {"entries": f["nr"]}


def _gsi_routing_c(a: Args, call: IoctlCall, names: CNames) -> CStep:
    # The routes follow the struct: one MSI route per GSI, to the local APIC's default address, as
    # minivmm's own KVM_SET_GSI_ROUTING does.
    n = a["entries"]
    return CStep(names.fd(call.role), call.request, "arg", (
        f"struct kvm_irq_routing *arg = calloc(1, sizeof(*arg) + {max(n, 1)} * sizeof(arg->entries[0]));",
        "",
        "if (!arg)",
        "\tdie(\"out of memory\");",
        f"arg->nr = {n};",
        f"for (unsigned int i = 0; i < {n}; i++) {{",
        "\targ->entries[i].gsi = i;",
        "\targ->entries[i].type = KVM_IRQ_ROUTING_MSI;",
        "\targ->entries[i].u.msi.address_lo = 0xfee00000;",
        "}"), after=("free(arg);",))


GSI_ROUTING = OpSpec(
    "gsi_routing", "KVM_SET_GSI_ROUTING with N routes: swaps the routing table and waits for an expedited "
    "grace period of kvm->irq_srcu (not kvm->srcu: a pending kvm->srcu grace period does not delay it).",
    (Arg("entries", "int", True, doc="the number of routes"),),
    requests=("KVM_SET_GSI_ROUTING",),
    label=lambda a: f"KVM_SET_GSI_ROUTING, {a['entries']} routes",
    ioctl=lambda a: IoctlCall("vm", "KVM_SET_GSI_ROUTING", StructArg(kvm_uapi.IRQ_ROUTING, {
        "nr": a["entries"], "flags": 0})),
    from_traced=_gsi_routing_from_traced,
    model=_gsi_routing_model, check=_gsi_routing_check, c=_gsi_routing_c)


# --- enable_cap -------------------------------------------------------------------------------------

def _enable_cap_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.enable_cap(a["cap"], a["arg0"])


def _enable_cap_from_traced(t: TracedIoctl) -> dict[str, Any] | None:
    f = t.struct_fields(kvm_uapi.ENABLE_CAP)
    return None if f is None else {"cap": f["cap"], "arg0": f["args"][0]}


ENABLE_CAP = OpSpec(
    "enable_cap", "KVM_ENABLE_CAP on the VM fd. Modelled for KVM_CAP_SPLIT_IRQCHIP (121): an empty GSI "
    "routing (one kvm->irq_srcu grace period) and local APICs in the kernel; any other capability is "
    "carried as its fixed cost (not modelled).",
    (Arg("cap", "int", True, doc="the KVM_CAP_* number"), Arg("arg0", "int", default=0, doc="args[0]")),
    requests=("KVM_ENABLE_CAP",),
    label=lambda a: f"KVM_ENABLE_CAP, cap {a['cap']}" + ("" if a["cap"] == KVM_CAP_SPLIT_IRQCHIP else
                                                          " (not modelled)"),
    ioctl=lambda a: IoctlCall("vm", "KVM_ENABLE_CAP", StructArg(kvm_uapi.ENABLE_CAP, {
        "cap": a["cap"], "flags": 0, "args": [a["arg0"], 0, 0, 0]})),
    from_traced=_enable_cap_from_traced,
    model=_enable_cap_model, modelled=lambda a: bool(a["cap"] == KVM_CAP_SPLIT_IRQCHIP), c=c_ioctl)


# --- tss_addr ---------------------------------------------------------------------------------------

def _tss_addr_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.set_tss_addr(a["addr"])


TSS_ADDR = OpSpec(
    "tss_addr", "KVM_SET_TSS_ADDR (x86): with unrestricted guest (VMX's default where the CPU has it), SVM "
    "and PVM it returns at once; no memslot, no grace period.",
    (Arg("addr", "int", True, doc="guest-physical address of the three TSS pages"),),
    requests=("KVM_SET_TSS_ADDR",),
    label=lambda a: "KVM_SET_TSS_ADDR",
    ioctl=lambda a: IoctlCall("vm", "KVM_SET_TSS_ADDR", a["addr"]),
    from_traced=lambda t: {"addr": t.arg},
    model=_tss_addr_model, c=c_ioctl)


# --- ioctl (not modelled) ---------------------------------------------------------------------------

def _ioctl_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.unmodelled_ioctl(a["cost"])


def _ioctl_c(a: Args, call: IoctlCall, names: CNames) -> CStep:
    # Not issued (its argument is unknown): a pause of its traced cost, as the host step does.
    return CStep(names.fd(call.role), call.request, timed_by=f"pause_ns({a['cost']})", issued=False,
                 needs=("pause",))


IOCTL = OpSpec(
    "ioctl", "Any ioctl the model does not model (e.g. KVM_SET_TSS_ADDR), carried as a fixed cost: its "
    "measured duration. The host does not issue it: it pauses for that long, so later steps keep their "
    "timing. Reports say \"not modelled\".",
    (Arg("name", "name", True, doc="the request's name, KVM_..."),
     Arg("cost", "time", True, doc="its duration (e.g. as traced)")),
    # Any request: a trace makes this op of every ioctl no other op takes, with its measured duration
    # as the cost (which the ioctl itself does not carry), so there is no inverse here.
    requests=(),
    label=lambda a: f"{a['name']} (not modelled)",
    ioctl=lambda a: IoctlCall("vm", a["name"], None),
    from_traced=None,
    model=_ioctl_model, modelled=lambda a: False, c=_ioctl_c)


# --- destroy_vm -------------------------------------------------------------------------------------

def _destroy_vm_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.destroy_vm()


DESTROY_VM = OpSpec(
    "destroy_vm", "The VM's last reference dropped: close() of the VM fd after its vCPU fds, so that "
    "kvm_vm_release() runs kvm_destroy_vm(), which waits in srcu_barrier(&kvm->srcu) for every SRCU "
    "callback still queued (the old buses a call_srcu() registration left) before cleanup_srcu_struct(). "
    "A sequence ends with it unless its file says keep_vm.", (),
    requests=(),
    label=lambda a: "close(vm): kvm_destroy_vm()",
    ioctl=None, close=lambda a: CloseCall("vm", after=("vcpu",)),
    # No ioctl maps back to it: a trace records the close (or the exit) that destroyed a VM apart from
    # the ioctls, and minivmm.trace.teardown makes this op of it.
    from_traced=None,
    model=_destroy_vm_model)


#: Every op, by name. A new op is one entry here (plus its host issuer in minivmm/timing/host_ops.py).
OPS: dict[str, OpSpec] = {op.name: op for op in (
    CREATE_VM, MEMSLOT, IRQCHIP, IOEVENTFD, IOEVENTFD_DEASSIGN, VCPU, RUN, PIT2, COALESCED_MMIO, IRQFD,
    GSI_ROUTING, ENABLE_CAP, TSS_ADDR, IOCTL, DESTROY_VM,
)}

#: The op that ends a sequence (the VM destroyed), unless the sequence keeps its VM.
TEARDOWN_OP = DESTROY_VM.name

#: The ops a traced request may be, by request name.
_OPS_BY_REQUEST: dict[str, tuple[OpSpec, ...]] = {}
for _op in OPS.values():
    for _request in _op.requests:
        _OPS_BY_REQUEST[_request] = (*_OPS_BY_REQUEST.get(_request, ()), _op)


def get_op(name: str) -> OpSpec:
    """The op called ``name``; ValueError names the known ones."""
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"unknown step {name!r} (known: {', '.join(list(OPS) + ['gap', 'sleep'])})") from None


def from_traced(t: TracedIoctl) -> tuple[str, dict[str, Any]] | None:
    """The op and its complete arguments for one traced ioctl, or None when no op takes it (or the op
    refuses the values, e.g. a zero-size coalesced zone): the caller carries it as an ``ioctl`` step."""
    for op in _OPS_BY_REQUEST.get(t.request, ()):
        given = op.from_traced(t) if op.from_traced is not None else None
        if given is None:
            continue
        try:
            return op.name, op.complete(given)
        except ValueError:
            return None
    return None
