"""``minivmm trace``: record the KVM ioctls of any VMM (ptrace + a seccomp filter that stops only on KVM
ioctls), time them with the kernel's own clock, and explain them with the kernel model."""
