"""The compiled KVM uapi (``<linux/kvm.h>`` through cffi) and the one errno choke point.

Every ioctl minivmm issues goes through :func:`ioctl_ptr` or :func:`ioctl_val` (``Vcpu.run``, the exit
decoder's ``decode(enter=True)``, calls the
same C wrapper directly on its hot path and raises through :func:`raise_for`): a negative return
becomes a :class:`~minivmm.kvm.errors.KvmError` naming the ioctl, with the kernel's errno.

An :class:`IoctlTracer` handed to these functions switches them to the timed C wrapper, which reads
CLOCK_MONOTONIC right beside the system call, and records one :class:`IoctlRecord` per call. This is
how ``minivmm timing`` measures.
"""

from __future__ import annotations

from typing import Any, NamedTuple, NoReturn

from minivmm._kvm import ffi, lib
from minivmm.kvm.errors import KvmError

__all__ = ["ffi", "lib", "ioctl_ptr", "ioctl_val", "ioctl_name", "raise_for", "MAP_FAILED",
           "IoctlRecord", "IoctlTracer"]

MAP_FAILED = ffi.cast("void *", -1)

_IOCTL_NAMES = {
    getattr(lib, name): name
    for name in (
        "KVM_GET_API_VERSION", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE", "KVM_GET_SUPPORTED_CPUID",
        "KVM_CREATE_VM", "KVM_SET_USER_MEMORY_REGION", "KVM_SET_TSS_ADDR", "KVM_SET_IDENTITY_MAP_ADDR",
        "KVM_IOEVENTFD", "KVM_CREATE_IRQCHIP", "KVM_CREATE_VCPU", "KVM_RUN", "KVM_GET_REGS",
        "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_SET_CPUID2", "KVM_SET_MP_STATE", "KVM_CREATE_PIT2",
        "KVM_IRQFD", "KVM_SET_GSI_ROUTING", "KVM_ENABLE_CAP", "KVM_REGISTER_COALESCED_MMIO",
    )
}


def ioctl_name(request: int) -> str:
    """Return the ``KVM_*`` name of an ioctl request number (or its hex value if it is not one we use)."""
    return _IOCTL_NAMES.get(request, hex(request))


def raise_for(request: int, err: int) -> NoReturn:
    """Raise the KvmError for a failed ioctl ``request`` with ``err`` (the errno)."""
    raise KvmError(ioctl_name(request), err)


class IoctlRecord(NamedTuple):
    """One traced ioctl: what was asked, what came back, how long the system call took."""

    fd: int
    name: str
    arg: str
    ret: int
    errno: int
    elapsed_ns: int

    def strace_line(self) -> str:
        """Format as ``strace -T`` does: ``ioctl(25, KVM_CREATE_VCPU, 0) = 28 <0.000137>``."""
        result = str(self.ret) if self.ret >= 0 else f"-1 {self.errno}"
        return f"ioctl({self.fd}, {self.name}, {self.arg}) = {result} <{self.elapsed_ns / 1e9:.6f}>"


class IoctlTracer:
    """Collects an :class:`IoctlRecord` for every ioctl issued through it."""

    __slots__ = ("records", "_elapsed")

    def __init__(self) -> None:
        self.records: list[IoctlRecord] = []
        self._elapsed: Any = ffi.new("int64_t *")  # where the C wrapper stores the system call's duration

    def _record(self, fd: int, request: int, arg: str, ret: int) -> IoctlRecord:
        rec = IoctlRecord(fd, ioctl_name(request), arg, ret, ffi.errno if ret < 0 else 0, self._elapsed[0])
        self.records.append(rec)
        return rec


def ioctl_ptr(fd: int, request: int, arg: Any, tracer: IoctlTracer | None = None, shown: str = "") -> int:
    """Issue an ioctl whose argument is a pointer (a cffi cdata); raise KvmError on failure.

    ``shown`` is how the argument appears in a traced record (strace prints a pointer's address; we
    print what it points to, which is what a reader wants).
    """
    if tracer is None:
        ret = lib.minivmm_ioctl_ptr(fd, request, arg)
        if ret < 0:
            raise_for(request, ffi.errno)
        return int(ret)
    ret = lib.minivmm_timed_ioctl_ptr(fd, request, arg, tracer._elapsed)
    rec = tracer._record(fd, request, shown, ret)
    if ret < 0:
        raise_for(request, rec.errno)
    return int(ret)


def ioctl_val(fd: int, request: int, arg: int = 0, tracer: IoctlTracer | None = None) -> int:
    """Issue an ioctl whose argument is an integer; raise KvmError on failure."""
    if tracer is None:
        ret = lib.minivmm_ioctl_val(fd, request, arg)
        if ret < 0:
            raise_for(request, ffi.errno)
        return int(ret)
    ret = lib.minivmm_timed_ioctl_val(fd, request, arg, tracer._elapsed)
    rec = tracer._record(fd, request, str(arg), ret)
    if ret < 0:
        raise_for(request, rec.errno)
    return int(ret)
