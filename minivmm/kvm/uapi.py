"""The compiled KVM uapi (``<linux/kvm.h>`` through cffi) and the one errno choke point.

Every ioctl minivmm issues goes through :func:`ioctl_ptr` or :func:`ioctl_val` (``Vcpu.run``, the exit
decoder's bound ``run``, calls the same C wrapper directly on its hot path and raises through
:func:`raise_for`): a negative return becomes a :class:`~minivmm.kvm.errors.KvmError` naming the ioctl,
with the kernel's errno.

An :class:`IoctlTracer` handed to these functions switches them to the timed C wrapper, which reads
CLOCK_MONOTONIC right beside the system call, and records one :class:`IoctlRecord` per call. This is
how ``minivmm timing`` measures. :func:`timed_close` times a close() the same way (the VM's teardown).
"""

from __future__ import annotations

from typing import Any, NamedTuple, NoReturn

from minivmm._kvm import ffi, lib
from minivmm.kvm.errors import KvmError

__all__ = ["ffi", "lib", "ioctl_ptr", "ioctl_val", "ioctl_name", "request_number", "cap_name", "raise_for",
           "timed_close", "MAP_FAILED", "IoctlRecord", "IoctlTracer"]

MAP_FAILED = ffi.cast("void *", -1)

#: Names that exist for another architecture but share a number with an x86 one are not preferred.
_OTHER_ARCH = ("KVM_ARM", "KVM_PPC", "KVM_S390", "KVM_RISCV", "KVM_LOONGARCH", "KVM_MIPS")

# Built on first use from the tables compiled out of this host's <linux/kvm.h> (every request and every
# capability it defines): a boot that never prints a name never pays for them.
_request_names: dict[int, str] = {}
_request_numbers: dict[str, int] = {}
_cap_names: dict[int, str] = {}


def _named(table: Any, count: int, out: dict[int, str]) -> None:
    for i in range(count):
        name = ffi.string(table[i].name).decode()
        value = int(table[i].value)
        old = out.get(value)
        if old is None or (old.startswith(_OTHER_ARCH) and not name.startswith(_OTHER_ARCH)):
            out[value] = name


def _requests() -> dict[int, str]:
    if not _request_names:
        _named(lib.minivmm_kvm_requests, lib.minivmm_kvm_requests_count, _request_names)
        for i in range(lib.minivmm_kvm_requests_count):
            _request_numbers[ffi.string(lib.minivmm_kvm_requests[i].name).decode()] = \
                int(lib.minivmm_kvm_requests[i].value)
    return _request_names


_IOC_DIRS = {0: "_IOC_NONE", 1: "_IOC_WRITE", 2: "_IOC_READ", 3: "_IOC_READ|_IOC_WRITE"}


def ioctl_name(request: int) -> str:
    """The ``KVM_*`` name of an ioctl request number, as this host's header defines it; a request the
    header lacks is spelled as strace spells it: ``_IOC(_IOC_READ|_IOC_WRITE, 0xae, 0x99, 0x8)``.

    The one way minivmm names a request, whether it issued it or traced it."""
    name = _requests().get(request)
    if name is not None:
        return name
    return (f"_IOC({_IOC_DIRS[request >> 30 & 3]}, {request >> 8 & 0xFF:#x}, {request & 0xFF:#x}, "
            f"{request >> 16 & 0x3FFF:#x})")


def request_number(name: str) -> int | None:
    """The number of the request ``name`` in this host's header, or None where the header lacks it."""
    _requests()
    return _request_numbers.get(name)


def cap_name(cap: int) -> str:
    """The ``KVM_CAP_*`` name of a capability number (the number itself where the header lacks it)."""
    if not _cap_names:
        _named(lib.minivmm_kvm_caps, lib.minivmm_kvm_caps_count, _cap_names)
    return _cap_names.get(cap, str(cap))


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


def timed_close(fd: int) -> int:
    """close() ``fd`` with the clock read right beside the system call; return its duration (ns).
    A failure raises KvmError naming ``close`` (the fd is released all the same, as Linux does)."""
    elapsed = ffi.new("int64_t *")
    if lib.minivmm_timed_close(fd, elapsed) < 0:
        raise KvmError("close", ffi.errno)
    return int(elapsed[0])
