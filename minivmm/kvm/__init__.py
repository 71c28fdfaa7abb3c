"""KVM-facing state: the only code in minivmm that issues ioctls on /dev/kvm file descriptors.

``Kvm`` (the system fd) creates ``Vm``; ``Vm`` creates ``Vcpu``; each closes its descriptor and unmaps
what it mapped on ``close()`` or when its ``with`` block ends.

The names below are loaded on first use, so that importing a light submodule (``minivmm.kvm.paths``,
``minivmm.kvm.errors``) does not load the compiled bindings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from minivmm.kvm.errors import KvmError, KvmUnavailable
from minivmm.kvm.paths import DEFAULT_DEVICE_PATH

if TYPE_CHECKING:
    from minivmm.kvm.system import Kvm

__all__ = ["Kvm", "KvmError", "KvmUnavailable", "DEFAULT_DEVICE_PATH"]


def __getattr__(name: str) -> Any:
    if name == "Kvm":
        from minivmm.kvm.system import Kvm
        return Kvm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
