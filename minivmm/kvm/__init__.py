"""KVM-facing state: the only code in minivmm that issues ioctls on /dev/kvm file descriptors.

``Kvm`` (the system fd) creates ``Vm``; ``Vm`` creates ``Vcpu``; each closes its descriptor and unmaps
what it mapped on ``close()`` or when its ``with`` block ends.
"""

from minivmm.kvm.errors import KvmError, KvmUnavailable
from minivmm.kvm.system import Kvm, DEFAULT_DEVICE_PATH

__all__ = ["Kvm", "KvmError", "KvmUnavailable", "DEFAULT_DEVICE_PATH"]
