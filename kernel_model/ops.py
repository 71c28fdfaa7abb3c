"""One spec per sequence op: its arguments, checks, label, strace form and how the model runs it.

A sequence step (:class:`kernel_model.sequences.Step`) names its op; everything that depends on which
op it is lives in that op's :class:`OpSpec` here, in ``OPS``. The host side (``minivmm timing``
issuing the real ioctl) is ``minivmm.timing.host_ops``, keyed by the same names, with a test that
every op has a host implementation. A new op is one ``OpSpec`` entry here, one host step there, and
their tests.

What each op does in the model, and the file format, are documented in kernel_model/README.md
("Sequence files").
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kernel_model.kvm_host import KVM_CAP_SPLIT_IRQCHIP, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY
from kernel_model.kvm_main import KvmModel

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


def _no_check(a: Args) -> None:
    """Ops whose arguments need no check beyond their kinds."""


def _always(a: Args) -> bool:
    return True


@dataclass(frozen=True)
class OpSpec:
    """Everything about one op. Plain data: the functions are small and named below."""

    name: str
    #: What the op is in the kernel's terms (for the documentation).
    doc: str
    args: tuple[Arg, ...]
    #: How reports name a step: ``KVM_CREATE_VCPU, 0``.
    label: Callable[[Args], str]
    #: The step as strace shows it: (fd role: kvm, vm or vcpuN; request name; argument text).
    strace: Callable[[Args], tuple[str, str, str]]
    #: Issue the step against the model (the caller times it).
    model: Callable[[KvmModel, Args, random.Random], None]
    #: Checks of one step's own arguments (cross-step rules are the model kernel's: see
    #: ``sequences.validate``). Raises ValueError with a message for the user.
    check: Callable[[Args], None] = _no_check
    #: Whether the model models this step (False: carried as a fixed cost, and reports say so).
    modelled: Callable[[Args], bool] = field(default=_always)

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
    label=lambda a: "KVM_CREATE_VM",
    strace=lambda a: ("kvm", "KVM_CREATE_VM", "0"),
    model=_create_vm_model)


# --- memslot ---------------------------------------------------------------------------------------

def _slot_name(slot: int) -> str:
    """``3``, or ``1:3`` for slot 3 of address space 1 (the high 16 bits of KVM's slot number)."""
    return f"{slot >> 16}:{slot & 0xFFFF}" if slot >> 16 else str(slot)


def _memslot_flags(a: Args) -> int:
    return (KVM_MEM_READONLY if a["readonly"] else 0) | (KVM_MEM_LOG_DIRTY_PAGES if a["log_dirty"] else 0)


def _memslot_label(a: Args) -> str:
    return f"KVM_SET_USER_MEMORY_REGION, slot {_slot_name(a['slot'])}" + (" (delete)" if a["size"] == 0 else "")


def _memslot_strace(a: Args) -> tuple[str, str, str]:
    names = [n for n, on in (("KVM_MEM_LOG_DIRTY_PAGES", a["log_dirty"]), ("KVM_MEM_READONLY", a["readonly"]))
             if on]
    return ("vm", "KVM_SET_USER_MEMORY_REGION",
            f"{{slot={a['slot']}, flags={'|'.join(names) or '0'}, guest_phys_addr={a['base']:#x}, "
            f"memory_size={a['size']}, ...}}")


def _memslot_check(a: Args) -> None:
    if not 0 <= a["slot"] < 1 << 32:
        raise ValueError("slot is a 32-bit number (address space << 16 | slot id)")


def _memslot_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.set_user_memory_region(a["slot"], a["base"], a["size"], _memslot_flags(a))


MEMSLOT = OpSpec(
    "memslot", "KVM_SET_USER_MEMORY_REGION (or ..._REGION2): create (one memslot swap: "
    "synchronize_srcu_expedited(&kvm->srcu)), move or delete (two), change log_dirty alone (one), or "
    "leave unchanged (none) a memslot; size=0 deletes. slot carries the address space in its high 16 bits.",
    (Arg("slot", "int", True, doc="KVM's slot number: address space << 16 | slot id"),
     Arg("base", "size", True, doc="guest-physical address"), Arg("size", "size", True, doc="0 deletes"),
     Arg("readonly", "flag", doc="KVM_MEM_READONLY"), Arg("log_dirty", "flag", doc="KVM_MEM_LOG_DIRTY_PAGES")),
    label=_memslot_label, strace=_memslot_strace, model=_memslot_model, check=_memslot_check)


# --- irqchip ----------------------------------------------------------------------------------------

def _irqchip_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.create_irqchip()


IRQCHIP = OpSpec(
    "irqchip", "KVM_CREATE_IRQCHIP: registers the platform's interrupt controllers on the io buses.", (),
    label=lambda a: "KVM_CREATE_IRQCHIP",
    strace=lambda a: ("vm", "KVM_CREATE_IRQCHIP", "0"),
    model=_irqchip_model)


# --- ioeventfd, ioeventfd_deassign ------------------------------------------------------------------

_IOEVENTFD_ARGS = (Arg("addr", "int", True), Arg("len", "int", True), Arg("datamatch", "int"),
                   Arg("pio", "flag"))


def _ioeventfd_label(verb: str) -> Callable[[Args], str]:
    def label(a: Args) -> str:
        return f"KVM_IOEVENTFD{verb}, {'pio' if a['pio'] else 'mmio'} {a['addr']:#x}"
    return label


def _ioeventfd_strace(deassign: bool) -> Callable[[Args], tuple[str, str, str]]:
    def strace(a: Args) -> tuple[str, str, str]:
        flags = [f for f, on in (("DATAMATCH", a["datamatch"] is not None), ("PIO", a["pio"]),
                                 ("DEASSIGN", deassign)) if on]
        return "vm", "KVM_IOEVENTFD", f"{{addr={a['addr']:#x}, len={a['len']}, flags={'|'.join(flags) or '0'}, ...}}"
    return strace


def _ioeventfd_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.ioeventfd(a["addr"], a["len"], a["datamatch"], a["pio"])


def _ioeventfd_deassign_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.ioeventfd_deassign(a["addr"], a["len"], a["datamatch"], a["pio"])


IOEVENTFD = OpSpec(
    "ioeventfd", "KVM_IOEVENTFD (assign): registers the ioeventfd on the MMIO or PIO bus "
    "(kvm_io_bus_register_dev(): the old bus is freed by the variant's rule).",
    _IOEVENTFD_ARGS, label=_ioeventfd_label(""), strace=_ioeventfd_strace(False), model=_ioeventfd_model)

IOEVENTFD_DEASSIGN = OpSpec(
    "ioeventfd_deassign", "KVM_IOEVENTFD with DEASSIGN: kvm_io_bus_unregister_dev(), which waits for "
    "an expedited grace period in every variant; the same arguments as the assign.",
    _IOEVENTFD_ARGS, label=_ioeventfd_label(" deassign"), strace=_ioeventfd_strace(True),
    model=_ioeventfd_deassign_model)


# --- vcpu -------------------------------------------------------------------------------------------

def _vcpu_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.create_vcpu(a["id"])


VCPU = OpSpec(
    "vcpu", "KVM_CREATE_VCPU: on VMX with an in-kernel LAPIC the first one installs the APIC-access "
    "page memslot (one memslot swap); on x86 without one, the first one enables the kvm_has_noapic_vcpu "
    "static key (a kernel code patch).", (Arg("id", "int", True),),
    label=lambda a: f"KVM_CREATE_VCPU, {a['id']}",
    strace=lambda a: ("vm", "KVM_CREATE_VCPU", str(a["id"])),
    model=_vcpu_model)


# --- run --------------------------------------------------------------------------------------------

def _run_check(a: Args) -> None:
    if not 0 < a["section"] < a["period"]:
        raise ValueError("run needs 0 < section < period")


def _run_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    # The kernel's own refusals (a vCPU never created) come first; then the guest loop's memory.
    if a["vcpu"] in kvm.vcpu_ids and not kvm.memory_covers(LOOP_ADDR, LOOP_LEN):
        raise StepRefused(f"run needs a memslot covering {LOOP_ADDR:#x} (where the vCPU's guest loop runs)")
    kvm.run_vcpu(a["vcpu"], a["section"], a["period"], offset_ns=int(rng.random() * a["period"]))


RUN = OpSpec(
    "run", "The vCPU's first KVM_RUN: from then on it handles an exit every `period`, each inside an SRCU "
    "read section of `section` (its guest is a loop at 0x1000, so a memslot must cover that address).",
    (Arg("vcpu", "int", True), Arg("section", "time", default=DEFAULT_SECTION_NS),
     Arg("period", "time", default=DEFAULT_PERIOD_NS)),
    label=lambda a: f"KVM_RUN, vcpu {a['vcpu']} (first entry)",
    strace=lambda a: (f"vcpu{a['vcpu']}", "KVM_RUN", "0"),
    model=_run_model, check=_run_check)


# --- pit2 -------------------------------------------------------------------------------------------

def _pit2_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.create_pit2(a["speaker_dummy"])


PIT2 = OpSpec(
    "pit2", "KVM_CREATE_PIT2 (x86, after KVM_CREATE_IRQCHIP): registers the PIT's ports 0x40-0x43 on the "
    "PIO bus, and the speaker port 0x61 with speaker_dummy: kvm_io_bus_register_dev() each.",
    (Arg("speaker_dummy", "flag", doc="KVM_PIT_SPEAKER_DUMMY"),),
    label=lambda a: "KVM_CREATE_PIT2",
    strace=lambda a: ("vm", "KVM_CREATE_PIT2",
                      f"{{flags={'KVM_PIT_SPEAKER_DUMMY' if a['speaker_dummy'] else '0'}}}"),
    model=_pit2_model)


# --- coalesced_mmio ---------------------------------------------------------------------------------

def _coalesced_mmio_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.register_coalesced_mmio(a["addr"], a["size"], a["pio"])


def _coalesced_mmio_check(a: Args) -> None:
    if a["size"] <= 0:
        raise ValueError("size must be at least 1")


COALESCED_MMIO = OpSpec(
    "coalesced_mmio", "KVM_REGISTER_COALESCED_MMIO: a zone whose writes are queued in the coalesced ring; "
    "one kvm_io_bus_register_dev() on the MMIO bus (the PIO bus with pio), freed by the variant's rule.",
    (Arg("addr", "int", True), Arg("size", "size", True), Arg("pio", "flag", doc="a port I/O zone")),
    label=lambda a: f"KVM_REGISTER_COALESCED_MMIO, {'pio' if a['pio'] else 'mmio'} {a['addr']:#x}",
    strace=lambda a: ("vm", "KVM_REGISTER_COALESCED_MMIO",
                      f"{{addr={a['addr']:#x}, size={a['size']}, pio={int(a['pio'])}}}"),
    model=_coalesced_mmio_model, check=_coalesced_mmio_check)


# --- irqfd ------------------------------------------------------------------------------------------

def _irqfd_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.irqfd(a["gsi"], a["deassign"])


IRQFD = OpSpec(
    "irqfd", "KVM_IRQFD: attach (or with deassign detach) an eventfd that injects gsi. No grace period: "
    "the assign reads the routing under kvm->irq_srcu; a deassign flushes the irqfd clean-up workqueue.",
    (Arg("gsi", "int", True), Arg("deassign", "flag", doc="KVM_IRQFD_FLAG_DEASSIGN")),
    label=lambda a: f"KVM_IRQFD{' deassign' if a['deassign'] else ''}, gsi {a['gsi']}",
    strace=lambda a: ("vm", "KVM_IRQFD",
                      f"{{fd=?, gsi={a['gsi']}, flags={'KVM_IRQFD_FLAG_DEASSIGN' if a['deassign'] else '0'}}}"),
    model=_irqfd_model)


# --- gsi_routing ------------------------------------------------------------------------------------

def _gsi_routing_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.set_gsi_routing(a["entries"])


def _gsi_routing_check(a: Args) -> None:
    if a["entries"] < 0:
        raise ValueError("entries must be 0 or more")


GSI_ROUTING = OpSpec(
    "gsi_routing", "KVM_SET_GSI_ROUTING with N routes: swaps the routing table and waits for an expedited "
    "grace period of kvm->irq_srcu (not kvm->srcu: a pending kvm->srcu grace period does not delay it).",
    (Arg("entries", "int", True, doc="the number of routes"),),
    label=lambda a: f"KVM_SET_GSI_ROUTING, {a['entries']} routes",
    strace=lambda a: ("vm", "KVM_SET_GSI_ROUTING", f"{{nr={a['entries']}, ...}}"),
    model=_gsi_routing_model, check=_gsi_routing_check)


# --- enable_cap -------------------------------------------------------------------------------------

def _enable_cap_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.enable_cap(a["cap"], a["arg0"])


ENABLE_CAP = OpSpec(
    "enable_cap", "KVM_ENABLE_CAP on the VM fd. Modelled for KVM_CAP_SPLIT_IRQCHIP (121): an empty GSI "
    "routing (one kvm->irq_srcu grace period) and local APICs in the kernel; any other capability is "
    "carried as its fixed cost (not modelled).",
    (Arg("cap", "int", True, doc="the KVM_CAP_* number"), Arg("arg0", "int", default=0, doc="args[0]")),
    label=lambda a: f"KVM_ENABLE_CAP, cap {a['cap']}" + ("" if a["cap"] == KVM_CAP_SPLIT_IRQCHIP else
                                                          " (not modelled)"),
    strace=lambda a: ("vm", "KVM_ENABLE_CAP", f"{{cap={a['cap']}, args=[{a['arg0']:#x}, 0, 0, 0]}}"),
    model=_enable_cap_model, modelled=lambda a: bool(a["cap"] == KVM_CAP_SPLIT_IRQCHIP))


# --- tss_addr ---------------------------------------------------------------------------------------

def _tss_addr_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.set_tss_addr(a["addr"])


TSS_ADDR = OpSpec(
    "tss_addr", "KVM_SET_TSS_ADDR (x86): with unrestricted guest (VMX's default where the CPU has it), SVM "
    "and PVM it returns at once; no memslot, no grace period.",
    (Arg("addr", "int", True, doc="guest-physical address of the three TSS pages"),),
    label=lambda a: "KVM_SET_TSS_ADDR",
    strace=lambda a: ("vm", "KVM_SET_TSS_ADDR", hex(a["addr"])),
    model=_tss_addr_model)


# --- ioctl (not modelled) ---------------------------------------------------------------------------

def _ioctl_model(kvm: KvmModel, a: Args, rng: random.Random) -> None:
    kvm.unmodelled_ioctl(a["cost"])


IOCTL = OpSpec(
    "ioctl", "Any ioctl the model does not model (e.g. KVM_SET_TSS_ADDR), carried as a fixed cost: its "
    "measured duration. The host does not issue it: it pauses for that long, so later steps keep their "
    "timing. Reports say \"not modelled\".",
    (Arg("name", "name", True, doc="the request's name, KVM_..."),
     Arg("cost", "time", True, doc="its duration (e.g. as traced)")),
    label=lambda a: f"{a['name']} (not modelled)",
    strace=lambda a: ("vm", a["name"], "..."),
    model=_ioctl_model, modelled=lambda a: False)


#: Every op, by name. A new op is one entry here (plus its host step in minivmm/timing/host_ops.py).
OPS: dict[str, OpSpec] = {op.name: op for op in (
    CREATE_VM, MEMSLOT, IRQCHIP, IOEVENTFD, IOEVENTFD_DEASSIGN, VCPU, RUN, PIT2, COALESCED_MMIO, IRQFD,
    GSI_ROUTING, ENABLE_CAP, TSS_ADDR, IOCTL,
)}


def get_op(name: str) -> OpSpec:
    """The op called ``name``; ValueError names the known ones."""
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"unknown step {name!r} (known: {', '.join(list(OPS) + ['gap', 'sleep'])})") from None
