"""What every part of the VM model shares, as include/linux/kvm_host.h does for the kernel's: the
memslot, the limits and the few uapi values it reads, the error a modelled ioctl fails with, and
:class:`KvmArch`, the ``struct kvm_arch`` with the ``kvm_arch_*()`` hooks that kvm_main.c calls.

The VM itself is :class:`kernel_model.kvm_main.KvmModel`; the architectures are in
:mod:`kernel_model.arch`; the uapi structs as printed and traced are :mod:`kernel_model.kvm_uapi`.
"""

from __future__ import annotations

import abc
import errno
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from kernel_model.kvm_main import KvmModel

#: The x86 and arm64 (4K) page size: memslot bases and sizes are multiples of it.
PAGE_SIZE = 4096
#: include/uapi/linux/kvm.h values the model kernel itself reads (kernel_model.kvm_uapi names them in
#: its flag tables; a test checks them against the header): memslot flags, and the one capability
#: whose KVM_ENABLE_CAP is modelled.
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_CAP_SPLIT_IRQCHIP = 121
#: include/linux/kvm_host.h: memslots per address space; the architecture keeps
#: ``KvmArch.internal_mem_slots`` of them for itself (KVM_USER_MEM_SLOTS is the rest).
KVM_MEM_SLOTS_NUM = 32767
#: include/linux/kvm_host.h: the most GSI routes KVM_SET_GSI_ROUTING takes.
KVM_MAX_IRQ_ROUTES = 4096


class KvmIoctlError(OSError):
    """A modelled ioctl failed with ``errno`` (as the real one would)."""


class Memslot(NamedTuple):
    """A memslot: guest-physical base and size, and its KVM_MEM_* flags."""

    base: int
    size: int
    flags: int = 0


def x86_only(what: str) -> KvmIoctlError:
    """The error of an x86-only ioctl (or capability) issued on another architecture."""
    return KvmIoctlError(errno.ENOTTY, f"{what}: x86 only")


class KvmArch(abc.ABC):
    """``struct kvm_arch`` (the parts modelled) and the ``kvm_arch_*()`` hooks kvm_main.c calls, for one
    architecture: :class:`kernel_model.arch.x86.X86` or :class:`kernel_model.arch.arm64.Arm64`, chosen
    by ``Platform.arch``. Each VM has its own (``KvmModel.arch``); ``kvm`` is the VM it belongs to."""

    #: KVM_INTERNAL_MEM_SLOTS: the private memslots of the architecture (0 unless it defines some).
    internal_mem_slots = 0

    def __init__(self, kvm: KvmModel) -> None:
        self.kvm = kvm

    @property
    def user_mem_slots(self) -> int:
        """KVM_USER_MEM_SLOTS: the slot ids userspace may use."""
        return KVM_MEM_SLOTS_NUM - self.internal_mem_slots

    @abc.abstractmethod
    def irqchip_in_kernel(self) -> bool:
        """irqchip_in_kernel(): whether the VM's interrupt controller is in the kernel (irqfds and GSI
        routing need it)."""

    @abc.abstractmethod
    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP, which every architecture handles in its kvm_arch_vm_ioctl()."""

    @abc.abstractmethod
    def kvm_arch_vcpu_create(self, first: bool) -> None:
        """What the architecture does when a vCPU is created (``first``: the VM's first)."""

    @abc.abstractmethod
    def kvm_arch_vcpu_run_pid_change(self) -> None:
        """What the architecture does at a vCPU's first KVM_RUN."""

    @abc.abstractmethod
    def kvm_vm_ioctl_enable_cap(self, cap: int, arg0: int) -> None:
        """KVM_ENABLE_CAP of a capability the generic code does not handle (the caller has charged its
        fixed cost)."""

