"""The errors of the KVM layer: one for a failing ioctl, one for a /dev/kvm that cannot be opened."""

from __future__ import annotations

import errno as _errno
import os


class KvmError(OSError):
    """An ioctl on a KVM file descriptor failed: carries the ioctl's name and the kernel's errno.

    Wrappers never interpret the errno; callers that care (EINTR from KVM_RUN, EEXIST from
    KVM_IOEVENTFD) test ``.errno``.
    """

    def __init__(self, ioctl_name: str, err: int) -> None:
        super().__init__(err, f"{ioctl_name}: {os.strerror(err)} ({_errno.errorcode.get(err, err)})")
        self.ioctl_name = ioctl_name


class KvmUnavailable(OSError):
    """``/dev/kvm`` (or the path given instead) is missing, not a KVM device, or not accessible."""
