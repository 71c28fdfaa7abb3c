"""The architecture-specific parts of KVM (arch/*/kvm), one module each: :mod:`kernel_model.arch.x86`
and :mod:`kernel_model.arch.arm64`. Each is a :class:`kernel_model.kvm_host.KvmArch`; a platform picks
one with ``Platform.arch``."""
