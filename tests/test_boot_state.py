"""Boot state: the tables the VMM writes and the registers it sets, checked without KVM."""

from __future__ import annotations

import struct

import pytest

from minivmm.kvm.memory import GuestMemory
from minivmm.kvm.uapi import ffi
from minivmm.vmm import boot
from minivmm.vmm.boot import Mode
from minivmm.vmm.layout import MiB, system_area_base

MEM = 4 * MiB


@pytest.fixture
def mem():
    with GuestMemory(0, MEM) as m:
        yield m


def test_long_mode_identity_map_uses_2mib_pages(mem):
    boot.write_system_tables(mem, MEM, Mode.LONG)
    base = system_area_base(MEM)
    pml4 = struct.unpack("<Q", mem.read(base + boot.PML4_OFFSET, 8))[0]
    assert pml4 & ~0xFFF == base + boot.PDPT_OFFSET and pml4 & 3 == 3
    pdpt = struct.unpack("<4Q", mem.read(base + boot.PDPT_OFFSET, 32))
    for i, entry in enumerate(pdpt):
        pd = entry & ~0xFFF
        first, last = struct.unpack("<Q", mem.read(pd, 8))[0], struct.unpack("<Q", mem.read(pd + 511 * 8, 8))[0]
        assert first == (i << 30) | 0x83           # present, writable, 2 MiB page
        assert last == ((i << 30) + (511 << 21)) | 0x83
    # The MMIO window (0xd0000000) is mapped: PD 3, entry 0x80.
    pd3 = pdpt[3] & ~0xFFF
    assert struct.unpack("<Q", mem.read(pd3 + 0x80 * 8, 8))[0] == 0xD0000000 | 0x83


def test_real_mode_writes_nothing(mem):
    boot.write_system_tables(mem, MEM, Mode.REAL)
    assert mem.read(system_area_base(MEM), 64) == bytes(64)


@pytest.mark.parametrize("mode", list(Mode))
def test_sregs(mode):
    s = ffi.new("struct kvm_sregs *")
    boot.setup_sregs(s, MEM, mode)
    assert boot.guest_mode(s) is mode
    if mode is Mode.LONG:
        assert s.cs.l == 1 and s.cs.db == 0 and s.efer & boot.EFER_LMA and s.cr4 & boot.CR4_PAE
    if mode is Mode.PROTECTED:
        assert s.cs.db == 1 and s.cs.limit == 0xFFFFFFFF and not s.cr0 & boot.CR0_PG


def test_regs():
    r = ffi.new("struct kvm_regs *")
    boot.setup_regs(r, 0x1000, 3)
    assert (r.rip, r.rsp, r.rsi, r.rflags) == (0x1000, 0x1000, 3, 2)
