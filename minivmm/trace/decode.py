"""Naming and decoding KVM ioctls seen in another process: request names, fd roles, arguments.

Request and capability names come from the tables compiled from this host's ``<linux/kvm.h>`` (see
minivmm/_cffi_build/trace_build.py); argument structs are read from the tracee's memory with
process_vm_readv into cffi structs whose layout the compiler gave.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from minivmm.trace.syscalls import TraceOSError, ffi, lib, read_memory

#: Names that exist for another architecture but share a number with an x86 one are not preferred.
_OTHER_ARCH = re.compile(r"^KVM_(ARM|ARM64|PPC|S390|RISCV|LOONGARCH|MIPS)_")


def _table(array: Any, count: int) -> dict[int, str]:
    out: dict[int, str] = {}
    for i in range(count):
        name = ffi.string(array[i].name).decode()
        value = int(array[i].value)
        old = out.get(value)
        if old is None or (_OTHER_ARCH.match(old) and not _OTHER_ARCH.match(name)):
            out[value] = name
    return out


REQUEST_NAMES: dict[int, str] = _table(lib.minivmm_kvm_requests, lib.minivmm_kvm_requests_count)
REQUESTS: dict[str, int] = {}
for _i in range(lib.minivmm_kvm_requests_count):
    REQUESTS[ffi.string(lib.minivmm_kvm_requests[_i].name).decode()] = int(lib.minivmm_kvm_requests[_i].value)
CAP_NAMES: dict[int, str] = _table(lib.minivmm_kvm_caps, lib.minivmm_kvm_caps_count)


def request_name(request: int) -> str:
    """The ``KVM_*`` name of a request number, or ``_IOC(0xae, nr)`` style hex for one the header lacks."""
    name = REQUEST_NAMES.get(request)
    return name if name is not None else f"KVM_IOCTL_{request:#x}"


def cap_name(cap: int) -> str:
    """``KVM_CAP_*`` name of a capability number (the number itself if the header lacks it)."""
    return CAP_NAMES.get(cap, str(cap))


def _req(name: str) -> int:
    return REQUESTS.get(name, -1)


KVM_CREATE_VM = _req("KVM_CREATE_VM")
KVM_CREATE_VCPU = _req("KVM_CREATE_VCPU")
KVM_RUN = _req("KVM_RUN")
KVM_SET_USER_MEMORY_REGION = _req("KVM_SET_USER_MEMORY_REGION")
KVM_SET_USER_MEMORY_REGION2 = _req("KVM_SET_USER_MEMORY_REGION2")
KVM_IOEVENTFD = _req("KVM_IOEVENTFD")
KVM_CREATE_IRQCHIP = _req("KVM_CREATE_IRQCHIP")
KVM_CREATE_PIT2 = _req("KVM_CREATE_PIT2")
KVM_IRQFD = _req("KVM_IRQFD")
KVM_REGISTER_COALESCED_MMIO = _req("KVM_REGISTER_COALESCED_MMIO")
KVM_SET_GSI_ROUTING = _req("KVM_SET_GSI_ROUTING")
KVM_ENABLE_CAP = _req("KVM_ENABLE_CAP")
KVM_CHECK_EXTENSION = _req("KVM_CHECK_EXTENSION")
KVM_SET_TSS_ADDR = _req("KVM_SET_TSS_ADDR")


def _flags(value: int, names: list[tuple[int, str]]) -> str:
    parts = [n for bit, n in names if value & bit]
    rest = value & ~sum(bit for bit, _ in names)
    if rest:
        parts.append(hex(rest))
    return "|".join(parts) or "0"


MEM_FLAGS = [(lib.KVM_MEM_LOG_DIRTY_PAGES, "KVM_MEM_LOG_DIRTY_PAGES"), (lib.KVM_MEM_READONLY, "KVM_MEM_READONLY")]
if hasattr(lib, "KVM_MEM_GUEST_MEMFD"):
    MEM_FLAGS.append((lib.KVM_MEM_GUEST_MEMFD, "KVM_MEM_GUEST_MEMFD"))
IOEVENTFD_FLAGS = [(lib.KVM_IOEVENTFD_FLAG_DATAMATCH, "DATAMATCH"), (lib.KVM_IOEVENTFD_FLAG_PIO, "PIO"),
                   (lib.KVM_IOEVENTFD_FLAG_DEASSIGN, "DEASSIGN")]
IRQFD_FLAGS = [(lib.KVM_IRQFD_FLAG_DEASSIGN, "DEASSIGN"), (lib.KVM_IRQFD_FLAG_RESAMPLE, "RESAMPLE")]


@dataclass
class Decoded:
    """An argument: ``text`` as printed, ``fields`` for JSON and the sequence conversion."""

    text: str
    fields: dict[str, Any] = field(default_factory=dict)


#: The argument struct of each decoded request that takes a pointer.
STRUCTS: dict[int, str] = {
    KVM_SET_USER_MEMORY_REGION: "struct kvm_userspace_memory_region",
    KVM_IOEVENTFD: "struct kvm_ioeventfd",
    KVM_IRQFD: "struct kvm_irqfd",
    KVM_REGISTER_COALESCED_MMIO: "struct kvm_coalesced_mmio_zone",
    KVM_SET_GSI_ROUTING: "struct kvm_irq_routing",
    KVM_ENABLE_CAP: "struct kvm_enable_cap",
    KVM_CREATE_PIT2: "struct kvm_pit_config",
}
if hasattr(lib, "KVM_MEM_GUEST_MEMFD"):
    STRUCTS[KVM_SET_USER_MEMORY_REGION2] = "struct kvm_userspace_memory_region2"

#: Marks an argument struct that could not be read (a bad pointer: the kernel will answer EFAULT).
UNREADABLE = b""


def capture(pid: int, request: int, arg: int) -> bytes | None:
    """At the tracee's stop: copy the argument struct out of its memory (None if the request has none).

    Only the bytes are taken here, while the tracee waits; :func:`decode_raw` formats them later, so
    the stop is as short as it can be."""
    ctype = STRUCTS.get(request)
    if ctype is None:
        return None
    try:
        return read_memory(pid, arg, ctype)
    except TraceOSError:
        return UNREADABLE


def decode_arg(pid: int, request: int, arg: int) -> Decoded:
    """Decode ``arg`` of ``request``, reading the pointed-to struct from ``pid``'s memory now."""
    return decode_raw(request, arg, capture(pid, request, arg))


def decode_raw(request: int, arg: int, raw: bytes | None) -> Decoded:
    """Decode ``arg`` of ``request`` from the struct bytes :func:`capture` took."""
    if raw == UNREADABLE:
        return Decoded(f"{arg:#x}", {"unreadable": True})
    return _decode(raw or b"", request, arg)


def _struct(raw: bytes, ctype: str) -> Any:
    return ffi.cast(f"{ctype} *", ffi.from_buffer(raw))


def _decode(raw: bytes, request: int, arg: int) -> Decoded:
    if request in (KVM_CREATE_VM, KVM_CREATE_VCPU, KVM_CREATE_IRQCHIP, KVM_RUN):
        key = {KVM_CREATE_VM: "type", KVM_CREATE_VCPU: "id"}.get(request, "arg")
        return Decoded(str(arg), {key: arg})
    if request == KVM_CHECK_EXTENSION:
        return Decoded(cap_name(arg), {"cap": arg, "cap_name": cap_name(arg)})
    if request in (KVM_SET_USER_MEMORY_REGION, KVM_SET_USER_MEMORY_REGION2):
        two = request == KVM_SET_USER_MEMORY_REGION2
        m = _struct(raw, STRUCTS[request])
        f: dict[str, Any] = {"slot": int(m.slot), "flags": int(m.flags), "guest_phys_addr": int(m.guest_phys_addr),
             "memory_size": int(m.memory_size), "userspace_addr": int(m.userspace_addr),
             "readonly": bool(m.flags & lib.KVM_MEM_READONLY),
             "log_dirty": bool(m.flags & lib.KVM_MEM_LOG_DIRTY_PAGES)}
        text = (f"{{slot={f['slot']}, flags={_flags(f['flags'], MEM_FLAGS)}, "
                f"guest_phys_addr={f['guest_phys_addr']:#x}, memory_size={f['memory_size']}, "
                f"userspace_addr={f['userspace_addr']:#x}")
        if two:
            f.update(guest_memfd=int(m.guest_memfd), guest_memfd_offset=int(m.guest_memfd_offset))
            text += f", guest_memfd={f['guest_memfd']}, guest_memfd_offset={f['guest_memfd_offset']:#x}"
        return Decoded(text + "}", f)
    if request == KVM_IOEVENTFD:
        e = _struct(raw, "struct kvm_ioeventfd")
        flags = int(e.flags)
        f = {"addr": int(e.addr), "len": int(e.len), "fd": int(e.fd), "flags": flags,
             "datamatch": int(e.datamatch) if flags & lib.KVM_IOEVENTFD_FLAG_DATAMATCH else None,
             "pio": bool(flags & lib.KVM_IOEVENTFD_FLAG_PIO),
             "deassign": bool(flags & lib.KVM_IOEVENTFD_FLAG_DEASSIGN)}
        text = f"{{addr={f['addr']:#x}, len={f['len']}, fd={f['fd']}, flags={_flags(flags, IOEVENTFD_FLAGS)}"
        if f["datamatch"] is not None:
            text += f", datamatch={f['datamatch']:#x}"
        return Decoded(text + "}", f)
    if request == KVM_IRQFD:
        q = _struct(raw, "struct kvm_irqfd")
        flags = int(q.flags)
        f = {"fd": int(q.fd), "gsi": int(q.gsi), "flags": flags, "deassign": bool(flags & lib.KVM_IRQFD_FLAG_DEASSIGN),
             "resamplefd": int(q.resamplefd) if flags & lib.KVM_IRQFD_FLAG_RESAMPLE else None}
        text = f"{{fd={f['fd']}, gsi={f['gsi']}, flags={_flags(flags, IRQFD_FLAGS)}"
        if f["resamplefd"] is not None:
            text += f", resamplefd={f['resamplefd']}"
        return Decoded(text + "}", f)
    if request == KVM_REGISTER_COALESCED_MMIO:
        z = _struct(raw, "struct kvm_coalesced_mmio_zone")
        f = {"addr": int(z.addr), "size": int(z.size), "pio": bool(z.pio)}
        return Decoded(f"{{addr={f['addr']:#x}, size={f['size']}, pio={int(f['pio'])}}}", f)
    if request == KVM_SET_GSI_ROUTING:
        r = _struct(raw, "struct kvm_irq_routing")
        return Decoded(f"{{nr={int(r.nr)}, flags={int(r.flags)}, entries=[...]}}", {"nr": int(r.nr)})
    if request == KVM_ENABLE_CAP:
        c = _struct(raw, "struct kvm_enable_cap")
        args = [int(a) for a in c.args]
        shown = ", ".join(hex(a) for a in args)
        return Decoded(f"{{cap={cap_name(int(c.cap))}, flags={int(c.flags)}, args=[{shown}]}}",
                       {"cap": int(c.cap), "cap_name": cap_name(int(c.cap)), "flags": int(c.flags), "args": args})
    if request == KVM_CREATE_PIT2:
        p = _struct(raw, "struct kvm_pit_config")
        return Decoded(f"{{flags={int(p.flags):#x}}}", {"flags": int(p.flags)})
    # Everything else by name: an _IO request's argument is a value, the others' a pointer.
    return Decoded(f"{arg:#x}", {})


_VCPU_LINK = re.compile(r"^anon_inode:kvm-vcpu:(\d+)$")


def fd_link(pid: int, fd: int) -> str | None:
    """What ``/proc/PID/fd/FD`` points to (``anon_inode:kvm-vm``, ``/dev/kvm``...), None if gone."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None


@dataclass
class FdRoles:
    """The KVM fds of one process: learnt from KVM_CREATE_VM/KVM_CREATE_VCPU's return values, and checked
    against ``/proc/PID/fd`` so that a dup'd, closed or reused fd is still named right."""

    pid: int
    roles: dict[int, str] = field(default_factory=dict)
    vm_count: int = 0
    vm_of_fd: dict[int, int] = field(default_factory=dict)

    def created_vm(self, fd: int) -> str:
        """Record a new VM fd; returns its role (``vm``, or ``vm1``, ``vm2``... for further VMs)."""
        role = "vm" if self.vm_count == 0 else f"vm{self.vm_count}"
        self.vm_count += 1
        self.roles[fd] = role
        return role

    def created_vcpu(self, fd: int, vcpu_id: int, vm_role: str) -> str:
        """Record a new vCPU fd; ``vcpu0`` (or ``vm1.vcpu0`` under a second VM)."""
        role = f"vcpu{vcpu_id}" if vm_role == "vm" else f"{vm_role}.vcpu{vcpu_id}"
        self.roles[fd] = role
        return role

    def role(self, fd: int, tid: int | None = None) -> str:
        """The fd's role; falls back on what /proc says for an fd we have not seen created (dup).

        ``tid`` is the calling thread (its fd table is the one the ioctl used)."""
        link = fd_link(tid or self.pid, fd)
        known = self.roles.get(fd)
        if link is None:
            return known or f"fd{fd}"
        if link == "/dev/kvm":
            return "system"
        if known is not None and (
                (link == "anon_inode:kvm-vm" and known.startswith("vm") and ".vcpu" not in known)
                or (_VCPU_LINK.match(link) and "vcpu" in known)):
            return known
        if link == "anon_inode:kvm-vm":
            # A dup of a VM fd we know (the only VM is the usual case), else an unknown VM.
            vms = {r for r in self.roles.values() if r.startswith("vm") and ".vcpu" not in r}
            return next(iter(vms)) if len(vms) == 1 else f"vm?fd{fd}"
        m = _VCPU_LINK.match(link)
        if m:
            return f"vcpu{m.group(1)}"
        return f"fd{fd}"

    def forget_cloexec(self) -> None:
        """After execve: forget every fd (VMMs open KVM fds close-on-exec; /proc re-checks any that stay)."""
        self.roles.clear()
