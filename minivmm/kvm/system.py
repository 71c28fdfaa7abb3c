"""The KVM system file descriptor (``/dev/kvm``): wrappers over its ioctls, and the parent of every VM."""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from minivmm.kvm.errors import KvmError, KvmUnavailable
from minivmm.kvm.paths import DEFAULT_DEVICE_PATH
from minivmm.kvm.uapi import IoctlTracer, ffi, ioctl_ptr, ioctl_val, lib
from minivmm.kvm.vm import Vm, VmObserver


class Kvm:
    """An open ``/dev/kvm``. Creates VMs; closes its descriptor on ``close()`` or at the end of ``with``.

    ``tracer``, when given, is handed to every VM and vCPU created from here: each of their ioctls is
    then timed and recorded (see :class:`~minivmm.kvm.uapi.IoctlTracer`).
    """

    def __init__(self, path: str = DEFAULT_DEVICE_PATH, tracer: IoctlTracer | None = None) -> None:
        self.path = path
        self.tracer = tracer
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(errno.ENOENT, f"{path} does not exist: is the kvm module loaded?") from None
        except PermissionError:
            raise KvmUnavailable(errno.EACCES, f"{path} is not readable and writable by this user "
                                 "(add yourself to the 'kvm' group or run as root)") from None
        except OSError as e:
            raise KvmUnavailable(e.errno, f"cannot open {path}: {e.strerror}") from None
        try:
            if not stat.S_ISCHR(os.fstat(self.fd).st_mode):
                raise KvmUnavailable(errno.ENODEV, f"{path} is not a character device")
            version = self.get_api_version()
        except KvmError:
            os.close(self.fd)
            raise KvmUnavailable(errno.ENODEV,
                                 f"{path} does not answer KVM_GET_API_VERSION: not a KVM device") from None
        except KvmUnavailable:
            os.close(self.fd)
            raise
        if version != lib.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmUnavailable(errno.ENODEV, f"{path} speaks KVM API {version}, minivmm needs {lib.KVM_API_VERSION}")

    def get_api_version(self) -> int:
        """Wrapper over KVM_GET_API_VERSION (12 on every kernel since 2.6.22)."""
        return ioctl_val(self.fd, lib.KVM_GET_API_VERSION, 0)

    def check_extension(self, cap: int) -> int:
        """Wrapper over KVM_CHECK_EXTENSION on the system fd: 0 if ``cap`` is absent, else its value."""
        return ioctl_val(self.fd, lib.KVM_CHECK_EXTENSION, cap)

    def get_vcpu_mmap_size(self) -> int:
        """Wrapper over KVM_GET_VCPU_MMAP_SIZE: the size of each vCPU's ``kvm_run`` mapping."""
        return ioctl_val(self.fd, lib.KVM_GET_VCPU_MMAP_SIZE, 0)

    def get_supported_cpuid(self, max_entries: int = 256) -> Any:
        """Wrapper over KVM_GET_SUPPORTED_CPUID: returns a ``struct kvm_cpuid2 *`` (cffi-owned).

        The kernel answers E2BIG when ``max_entries`` is too small; we double and retry.
        """
        while True:
            cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": max_entries, "entries": max_entries})
            try:
                ioctl_ptr(self.fd, lib.KVM_GET_SUPPORTED_CPUID, cpuid)
                return cpuid
            except KvmError as e:
                if e.errno != errno.E2BIG or max_entries >= 4096:
                    raise
                max_entries *= 2

    def create_vm(self, vm_type: int = 0, observer: VmObserver | None = None) -> Vm:
        """Wrapper over KVM_CREATE_VM: a new, empty VM (no memory, no vCPUs); ``observer`` is told about
        its bus- and memslot-changing ioctls from the first one on."""
        mmap_size = self.get_vcpu_mmap_size()
        fd = ioctl_val(self.fd, lib.KVM_CREATE_VM, vm_type, self.tracer)
        return Vm(fd, mmap_size, self.tracer, observer)

    def close(self) -> None:
        """Close ``/dev/kvm``. VMs created from it stay valid (they hold their own reference)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
