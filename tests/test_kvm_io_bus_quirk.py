"""A kvm_io_bus lookup quirk the model found, checked against the real kernel.

kvm_io_bus_cmp() is not a strict ordering once a zero-length range starts where another range ends,
so the order of registrations decides whether a 4-byte ioeventfd is found: registered after two
zero-length ioeventfds at +0 and +8, a guest write at +4 exits to userspace although an ioeventfd
matches it. The model (of 6.18's code) predicts the outcome of both orders; this test checks that the
host kernel does the same.
"""

from __future__ import annotations

import os

import pytest

from kernel_model.kvm_io_bus import Ioeventfd, KvmBus, KvmIoBus, KvmIoRange, claimant, insert_range
from minivmm.kvm import Kvm
from minivmm.kvm.exits import Hlt, MmioWrite
from minivmm.kvm.memory import GuestMemory
from minivmm.kvm.uapi import lib
from minivmm.kvm.vm import IoEvent
from minivmm.shadow.checker import ShadowChecker
from minivmm.vmm import boot
from minivmm.vmm.boot import Mode

BASE = 0xD0004000
MEM = 1 << 20
# mov ebx, BASE + 4 ; mov dword [ebx], 1 ; hlt   (32-bit protected mode)
GUEST = bytes.fromhex("bb") + (BASE + 4).to_bytes(4, "little") + bytes.fromhex("c70301000000") + b"\xf4"

QUIRK_ORDER = [(BASE, 0), (BASE + 8, 0), (BASE + 4, 4)]
SORTED_ORDER = [(BASE + 4, 4), (BASE, 0), (BASE + 8, 0)]


def model_handles(order: list[tuple[int, int]]) -> bool:
    bus = KvmIoBus(KvmBus.KVM_MMIO_BUS, 0)
    for version, (addr, length) in enumerate(order, 1):
        bus = insert_range(bus, KvmIoRange(addr, length, Ioeventfd(addr, length)), version)
    return claimant(bus, BASE + 4, 4, 1) is not None


def kernel_handles(order: list[tuple[int, int]], shadow: ShadowChecker | None = None) -> bool:
    """Run the guest's one write on the host kernel with the ioeventfds registered in ``order``; with a
    ``shadow``, the shadow mirrors the registrations and judges the exit, as in a minivmm run."""
    with Kvm() as kvm, kvm.create_vm(observer=shadow) as vm, GuestMemory(0, MEM) as mem:
        vm.set_user_memory_region(0, 0, MEM, mem.host_addr)
        mem.write(0x1000, GUEST)
        boot.write_system_tables(mem, MEM, Mode.PROTECTED)
        fds = []
        try:
            for addr, length in order:
                fds.append(lib.eventfd(0, lib.EFD_CLOEXEC | lib.EFD_NONBLOCK))
                vm.register_ioevent(IoEvent(addr, length, fds[-1]))
            cpu = vm.create_vcpu(0)
            boot.setup_vcpu(cpu, MEM, Mode.PROTECTED, 0x1000, 0, kvm.get_supported_cpuid())
            v_entry = shadow.version if shadow is not None else 0
            first = cpu.run()
            if shadow is not None:
                shadow.check_exit(0, first, v_entry, shadow.version)
        finally:
            for fd in fds:
                os.close(fd)
    assert isinstance(first, (Hlt, MmioWrite)), first
    return isinstance(first, Hlt)


def test_the_model_predicts_the_quirk():
    assert model_handles(SORTED_ORDER) is True
    assert model_handles(QUIRK_ORDER) is False


@pytest.mark.kvm
@pytest.mark.parametrize("order", [SORTED_ORDER, QUIRK_ORDER], ids=["sorted-order", "quirk-order"])
def test_the_host_kernel_agrees_with_the_model(order):
    assert kernel_handles(order) is model_handles(order), (
        "the host's kvm_io_bus lookup differs from the modelled 6.18 code for this registration order")


@pytest.mark.kvm
@pytest.mark.parametrize("order", [SORTED_ORDER, QUIRK_ORDER], ids=["sorted-order", "quirk-order"])
def test_the_shadow_does_not_flag_the_exit_the_kernel_makes(order):
    # The shadow decides "claimed" with the model's lookup, so in the quirk order the write's exit is
    # what it expects; in the sorted order the kernel takes the write and no exit is judged.
    shadow = ShadowChecker()
    handled = kernel_handles(order, shadow)
    assert handled is model_handles(order)
    assert shadow.violation_count == 0, shadow.violations
    assert shadow.exits_checked == (0 if handled else 1)
