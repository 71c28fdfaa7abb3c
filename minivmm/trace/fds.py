"""Which KVM object each fd of a traced process is: ``system`` (/dev/kvm), ``vm`` (the first VM; ``vm1``,
``vm2``... for further ones), ``vcpuN`` (``vm1.vcpuN`` under a further VM).

Learnt from the results of KVM_CREATE_VM/KVM_CREATE_VCPU and the process's ``close()`` calls (in the
order the kernel saw them), and checked against what ``/proc/TID/fd/FD`` pointed to when the ioctl
stopped (its *link kind*), so that a dup'd or inherited fd is still named right.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

#: Link kinds: what /proc/TID/fd/FD pointed to at the stop (a vCPU's is its id, >= 0).
LINK_GONE, LINK_OTHER, LINK_SYSTEM, LINK_VM = -4, -3, -2, -1
_VCPU = "anon_inode:kvm-vcpu:"


def link_kind(tid: int, fd: int) -> int:
    """What the fd is, by its /proc link: LINK_SYSTEM, LINK_VM, a vCPU id, LINK_OTHER or LINK_GONE."""
    try:
        link = os.readlink(f"/proc/{tid}/fd/{fd}")
    except OSError:
        return LINK_GONE
    return kind_of_link(link)


def kind_of_link(link: str) -> int:
    """What an fd whose /proc link reads ``link`` is (see :func:`link_kind`)."""
    if link == "/dev/kvm":
        return LINK_SYSTEM
    if link == "anon_inode:kvm-vm":
        return LINK_VM
    if link.startswith(_VCPU) and link[len(_VCPU):].isdigit():
        return int(link[len(_VCPU):])
    return LINK_OTHER


_VM_ROLE = re.compile(r"^vm\d*$")


def vm_of_role(role: str) -> str | None:
    """The VM a role belongs to: ``vm1`` for ``vm1`` and ``vm1.vcpu0``, ``vm`` for ``vm`` and ``vcpu0``."""
    if _VM_ROLE.match(role):
        return role
    if role.startswith("vcpu"):
        return "vm"
    head, dot, tail = role.partition(".")
    return head if dot and _VM_ROLE.match(head) and tail.startswith("vcpu") else None


@dataclass
class ProcessFds:
    """The KVM fds of one process (its threads share them)."""

    roles: dict[int, str] = field(default_factory=dict)
    vm_count: int = 0

    def created_vm(self, fd: int) -> str:
        """Record a new VM fd; returns its role (``vm``, or ``vm1``, ``vm2``... for further VMs)."""
        role = "vm" if self.vm_count == 0 else f"vm{self.vm_count}"
        self.vm_count += 1
        self.roles[fd] = role
        return role

    def created_vcpu(self, fd: int, vcpu_id: int, vm_role: str) -> str:
        """Record a new vCPU fd; ``vcpu0`` (or ``vm1.vcpu0`` under a further VM)."""
        vm = vm_of_role(vm_role) or "vm"
        role = f"vcpu{vcpu_id}" if vm == "vm" else f"{vm}.vcpu{vcpu_id}"
        self.roles[fd] = role
        return role

    def closed(self, fd: int) -> str | None:
        """The fd was closed: forget it; returns the role it had (None: not a KVM fd we knew)."""
        return self.roles.pop(fd, None)

    def executed(self) -> None:
        """After execve: forget every fd (VMMs open KVM fds close-on-exec; the link kind re-checks any
        that stay)."""
        self.roles.clear()

    def copy(self) -> ProcessFds:
        """A forked child's view (it inherits the fds; its further VMs are numbered after the parent's)."""
        return ProcessFds(dict(self.roles), self.vm_count)

    def role(self, fd: int, link: int) -> str:
        """The fd's role: as created, else from what it pointed to at the stop (``link``, see
        :func:`link_kind`: an inherited or dup'd fd)."""
        known = self.roles.get(fd)
        if known is not None:
            # What KVM_CREATE_* returned and close() has not ended is the fd (the link may be older).
            return known
        if link == LINK_GONE:
            return f"fd{fd}"
        if link == LINK_SYSTEM:
            return "system"
        vms = sorted({r for r in self.roles.values() if _VM_ROLE.match(r)})
        if link == LINK_VM:
            # A dup of a VM fd we know (the only VM is the usual case), else an unknown VM.
            return vms[0] if len(vms) == 1 else f"vm?fd{fd}"
        if link >= 0:
            if len(vms) <= 1 and (not vms or vms[0] == "vm"):
                return f"vcpu{link}"
            return f"{vms[0]}.vcpu{link}" if len(vms) == 1 else f"vm?.vcpu{link}"
        return f"fd{fd}"
