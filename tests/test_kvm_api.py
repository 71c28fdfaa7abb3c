"""The KVM bindings against the real kernel: wrappers, errno choke point, cross-check, no leaks."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

from minivmm.kvm import Kvm, KvmError
from minivmm.kvm.memory import GuestMemory
from minivmm.kvm.uapi import IoctlTracer, lib
from minivmm.kvm.vm import IoEvent

pytestmark = pytest.mark.kvm


def test_api_version_matches_an_independent_fcntl_ioctl():
    with Kvm() as kvm:
        assert kvm.get_api_version() == 12
        assert fcntl.ioctl(kvm.fd, lib.KVM_GET_API_VERSION, 0) == 12
        assert kvm.get_vcpu_mmap_size() >= 4096
        assert kvm.check_extension(lib.KVM_CAP_IOEVENTFD) == 1


def test_errors_name_the_ioctl_and_carry_errno():
    with Kvm() as kvm, kvm.create_vm() as vm:
        with pytest.raises(KvmError) as info:
            vm.set_user_memory_region(0, 0x1001, 4096, 0)  # unaligned guest address
        assert info.value.errno == errno.EINVAL
        assert info.value.ioctl_name == "KVM_SET_USER_MEMORY_REGION"
        assert "KVM_SET_USER_MEMORY_REGION" in str(info.value)


def test_memslot_add_move_delete_and_ioeventfd_assign_deassign():
    efd = lib.eventfd(0, lib.EFD_CLOEXEC)
    try:
        with Kvm() as kvm, kvm.create_vm() as vm, GuestMemory(0, 1 << 20) as mem:
            vm.set_user_memory_region(1, 0x100000, mem.size, mem.host_addr)
            vm.set_user_memory_region(1, 0, 0, mem.host_addr)               # delete
            vm.set_user_memory_region(1, 0x200000, mem.size, mem.host_addr)  # add elsewhere
            vm.set_user_memory_region(1, 0, 0, mem.host_addr)
            for ev in (IoEvent(0xD0000000, 4, efd), IoEvent(0xD0000010, 4, efd, datamatch=7),
                       IoEvent(0x510, 2, efd, pio=True), IoEvent(0xD0000020, 0, efd)):
                vm.register_ioevent(ev)
                with pytest.raises(KvmError) as dup:
                    vm.register_ioevent(ev)
                assert dup.value.errno == errno.EEXIST
                vm.unregister_ioevent(ev)
            vm.create_irqchip()
            vcpu = vm.create_vcpu(0)
            assert vcpu.get_regs().rip == 0xFFF0  # the reset vector
    finally:
        os.close(efd)


def test_tracer_records_strace_style_lines():
    tracer = IoctlTracer()
    with Kvm(tracer=tracer) as kvm, kvm.create_vm() as vm:
        vm.create_vcpu(0)
    names = [r.name for r in tracer.records]
    assert names == ["KVM_CREATE_VM", "KVM_CREATE_VCPU"]
    line = tracer.records[1].strace_line()
    assert line.startswith(f"ioctl({tracer.records[1].fd}, KVM_CREATE_VCPU, 0) = ")
    assert line.endswith(">") and "<0.0" in line
    assert all(r.elapsed_ns > 0 for r in tracer.records)


def test_mmio_read_answers_land_in_kvm_run_cut_to_its_data_field_and_stop_after_close():
    with Kvm() as kvm, kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        vcpu.complete_mmio_read(b"\x11\x22\x33\x44")
        assert bytes(vcpu.run_struct.mmio.data)[:4] == b"\x11\x22\x33\x44"
        vcpu.run_struct.mmio.len = 0x77
        vcpu.complete_mmio_read(bytes(range(1, 11)))  # longer than mmio.data: cut to its 8 bytes
        assert bytes(vcpu.run_struct.mmio.data) == bytes(range(1, 9)) and vcpu.run_struct.mmio.len == 0x77
        vcpu.close()
        with pytest.raises(RuntimeError, match="closed"):
            vcpu.complete_mmio_read(b"\x01")
