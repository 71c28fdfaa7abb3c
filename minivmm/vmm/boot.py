"""CPU boot state for the three modes a flat image can be entered in, and the VMM tables they need.

- ``real``: CS base 0 (selector 0), IP = load address, 16-bit code.
- ``protected``: 32-bit flat protected mode (base 0, 4 GiB limit), paging off.
- ``long``: 64-bit mode with an identity map of the first 4 GiB built from 2 MiB pages. 1 GiB pages are
  not used: not every host supports them (on a PVM host the same map in 1 GiB pages ends in
  KVM_EXIT_SHUTDOWN on the first instruction).

Every vCPU starts at the load address with RSP = load address (the stack grows down below the image) and
its index in RSI, so that a guest can tell its vCPUs apart. The GDT and page tables live in the system
area at the top of RAM (see :mod:`minivmm.vmm.layout`).
"""

from __future__ import annotations

import enum
import struct
from typing import Any

from minivmm.kvm.memory import GuestMemory
from minivmm.vmm.layout import IDENTITY_MAP_SIZE, system_area_base


class Mode(str, enum.Enum):
    """The CPU mode a guest image is entered in."""

    REAL = "real"
    PROTECTED = "protected"
    LONG = "long"


# GDT selectors (index * 8) and descriptors.
SEL_CODE64 = 0x08
SEL_DATA = 0x10
SEL_CODE32 = 0x18
_GDT = [
    0,
    0x00AF9A000000FFFF,  # 0x08: 64-bit code, present, DPL 0, L=1
    0x00CF92000000FFFF,  # 0x10: data, flat 4 GiB, writable
    0x00CF9A000000FFFF,  # 0x18: 32-bit code, flat 4 GiB
]

CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

PTE_PRESENT = 1 << 0
PTE_WRITE = 1 << 1
PTE_PS = 1 << 7  # 2 MiB page in a page directory entry

# Offsets inside the system area.
GDT_OFFSET = 0x0
PML4_OFFSET = 0x1000
PDPT_OFFSET = 0x2000
PD_OFFSET = 0x3000  # four page directories follow, one per GiB


def write_system_tables(mem: GuestMemory, mem_size: int, mode: Mode) -> None:
    """Write the GDT (protected, long) and the identity-mapping page tables (long) into the system area."""
    if mode is Mode.REAL:
        return
    base = system_area_base(mem_size)
    mem.write(base + GDT_OFFSET, struct.pack(f"<{len(_GDT)}Q", *_GDT))
    if mode is not Mode.LONG:
        return
    gib = 1 << 30
    n_pds = IDENTITY_MAP_SIZE // gib
    mem.write(base + PML4_OFFSET, struct.pack("<Q", (base + PDPT_OFFSET) | PTE_PRESENT | PTE_WRITE))
    mem.write(base + PDPT_OFFSET, struct.pack(
        f"<{n_pds}Q", *((base + PD_OFFSET + i * 0x1000) | PTE_PRESENT | PTE_WRITE for i in range(n_pds))))
    two_mib = 1 << 21
    for i in range(n_pds):
        entries = ((i * gib + j * two_mib) | PTE_PRESENT | PTE_WRITE | PTE_PS for j in range(512))
        mem.write(base + PD_OFFSET + i * 0x1000, struct.pack("<512Q", *entries))


def _flat_segment(seg: Any, selector: int, code: bool, long: bool = False) -> None:
    seg.base = 0
    seg.limit = 0xFFFFFFFF
    seg.selector = selector
    seg.type = 0xB if code else 0x3  # execute/read accessed; read/write accessed
    seg.present = 1
    seg.dpl = 0
    seg.s = 1
    seg.g = 1
    seg.l = 1 if long else 0
    seg.db = 0 if long else 1


def setup_sregs(sregs: Any, mem_size: int, mode: Mode) -> None:
    """Fill a ``struct kvm_sregs`` (read from the vCPU, so TR and LDT keep KVM's defaults) for ``mode``."""
    if mode is Mode.REAL:
        for seg in (sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
            seg.base = 0
            seg.selector = 0
        return
    base = system_area_base(mem_size)
    sregs.gdt.base = base + GDT_OFFSET
    sregs.gdt.limit = len(_GDT) * 8 - 1
    long = mode is Mode.LONG
    _flat_segment(sregs.cs, SEL_CODE64 if long else SEL_CODE32, code=True, long=long)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _flat_segment(seg, SEL_DATA, code=False)
    sregs.cr0 = CR0_PE | CR0_ET
    if long:
        sregs.cr3 = base + PML4_OFFSET
        sregs.cr4 = CR4_PAE
        sregs.cr0 |= CR0_PG
        sregs.efer = EFER_LME | EFER_LMA


def setup_regs(regs: Any, load_addr: int, vcpu_index: int) -> None:
    """Fill a ``struct kvm_regs``: entry at the load address, stack below it, the vCPU index in RSI."""
    regs.rip = load_addr
    regs.rsp = load_addr
    regs.rsi = vcpu_index
    regs.rflags = 0x2  # bit 1 is reserved and must be set


def setup_vcpu(vcpu: Any, mem_size: int, mode: Mode, load_addr: int, index: int, cpuid: Any = None) -> None:
    """Put a new vCPU in its boot state: CPUID (when given: what KVM_GET_SUPPORTED_CPUID returned), the
    segment and control registers of ``mode``, entry at ``load_addr`` with ``index`` in RSI.

    The one vCPU set-up sequence, for the machine, the timing runner and tests. ``vcpu`` is a
    :class:`~minivmm.kvm.vcpu.Vcpu`.
    """
    if cpuid is not None:
        vcpu.set_cpuid2(cpuid)
    sregs = vcpu.get_sregs()
    setup_sregs(sregs, mem_size, mode)
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    setup_regs(regs, load_addr, index)
    vcpu.set_regs(regs)


def guest_mode(sregs: Any) -> Mode:
    """The mode a vCPU is in now, from its control registers and CS (for disassembly and reports)."""
    if not sregs.cr0 & CR0_PE:
        return Mode.REAL
    if sregs.efer & EFER_LMA and sregs.cs.l:
        return Mode.LONG
    return Mode.PROTECTED
