"""The kernel-model shadow: a kernel_model twin of the VM that follows every ioctl the VMM issues and
judges every PIO/MMIO exit against the bus state the kernel must have had.

- :mod:`minivmm.shadow.checker`: the twin, the per-exit check, reconciliation, fault injection.
- :mod:`minivmm.shadow.ftrace`: the opt-in cross-check with the kernel's own kvm tracepoints.
"""
