"""minivmm: a pure-Python mini-VMM on /dev/kvm.

Layout (the folders are the architecture):

- ``minivmm.kvm``: one class per KVM file descriptor (system, VM, vCPU), the one errno choke point, guest
  memory, and the one decoder of ``struct kvm_run``. This is the only layer that touches ``/dev/kvm``.
- ``minivmm.devices``: the bus (one implementation for port I/O and MMIO) and the device models.
- ``minivmm.vmm``: CPU boot state, image loading, the exit dispatcher and the vCPU run loop, the machine
  that ties them together.
- ``minivmm.cli``: the ``minivmm`` command.

The executable model of the kernel's side lives beside this package, in ``kernel_model``.
"""

__version__ = "0.1.0"
