"""Build-time only: the one description of ``<linux/kvm.h>`` that both cffi modules are built from.

``minivmm._kvm`` (kvm_build.py: what minivmm issues) and ``minivmm._trace`` (trace_build.py: what the
tracer needs besides) used to scan the header and declare its argument structs each on its own; this
module holds what they share, and ``minivmm._kvm`` alone carries the result, so that one compiled
table names a request and one layout decodes a struct, whether minivmm issued it or traced it:

* :data:`TYPES` and :data:`ARGUMENT_STRUCTS`: the ``__u*`` types and the argument structs of the ioctls
  that sequences issue and the tracer decodes, *declared* (``...``): cffi takes values and layouts from
  the compiler, never from here;
* :func:`header_macros`: the macro names the preprocessor sees in the header, by pattern;
* :func:`requests`: every ``KVM_*`` ioctl request this architecture can evaluate (some request macros
  name other architectures' structs and are dropped by compiling them once);
* :func:`named_table`: a C table of ``{name, value}`` rows, for the requests and the capabilities.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

TYPES = """
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
typedef int32_t __s32;
"""

ARGUMENT_STRUCTS = """
/* --- the argument structs of the ioctls sequences issue and the tracer decodes --- */
#define KVMIO ...
#define KVM_MEM_LOG_DIRTY_PAGES ...
#define KVM_MEM_READONLY ...
#define KVM_IOEVENTFD_FLAG_DATAMATCH ...
#define KVM_IOEVENTFD_FLAG_PIO ...
#define KVM_IOEVENTFD_FLAG_DEASSIGN ...
#define KVM_PIT_SPEAKER_DUMMY ...
#define KVM_IRQFD_FLAG_DEASSIGN ...
#define KVM_IRQFD_FLAG_RESAMPLE ...
#define KVM_IRQ_ROUTING_IRQCHIP ...
#define KVM_IRQ_ROUTING_MSI ...

struct kvm_userspace_memory_region {
    __u32 slot;
    __u32 flags;
    __u64 guest_phys_addr;
    __u64 memory_size;
    __u64 userspace_addr;
    ...;
};

struct kvm_ioeventfd {
    __u64 datamatch;
    __u64 addr;
    __u32 len;
    __s32 fd;
    __u32 flags;
    ...;
};

struct kvm_coalesced_mmio_zone {
    __u64 addr;
    __u32 size;
    union { __u32 pad; __u32 pio; };
};

struct kvm_pit_config {
    __u32 flags;
    ...;
};

struct kvm_irqfd {
    __u32 fd;
    __u32 gsi;
    __u32 flags;
    __u32 resamplefd;
    ...;
};

struct kvm_enable_cap {
    __u32 cap;
    __u32 flags;
    __u64 args[4];
    ...;
};

struct kvm_irq_routing_irqchip {
    __u32 irqchip;
    __u32 pin;
    ...;
};

struct kvm_irq_routing_msi {
    __u32 address_lo;
    __u32 address_hi;
    __u32 data;
    ...;
};

typedef union {
    struct kvm_irq_routing_irqchip irqchip;
    struct kvm_irq_routing_msi msi;
    ...;
} kvm_irq_routing_entry_u_t;

struct kvm_irq_routing_entry {
    __u32 gsi;
    __u32 type;
    __u32 flags;
    kvm_irq_routing_entry_u_t u;
    ...;
};

struct kvm_irq_routing {
    __u32 nr;
    __u32 flags;
    struct kvm_irq_routing_entry entries[];
    ...;
};
"""

#: Only where the header has it (6.8 and later): guest_memfd memslots.
REGION2_STRUCT = """
#define KVM_MEM_GUEST_MEMFD ...
struct kvm_userspace_memory_region2 {
    __u32 slot; __u32 flags; __u64 guest_phys_addr; __u64 memory_size; __u64 userspace_addr;
    __u64 guest_memfd_offset; __u32 guest_memfd; ...;
};
"""

#: The C side of :func:`named_table` (the struct goes into the C source, this into the cdef).
NAMED_STRUCT_C = "struct minivmm_named { const char *name; unsigned long value; };\n"
NAMED_TABLES_CDEF = NAMED_STRUCT_C + """
extern const struct minivmm_named minivmm_kvm_requests[];
extern const int minivmm_kvm_requests_count;
extern const struct minivmm_named minivmm_kvm_caps[];
extern const int minivmm_kvm_caps_count;
"""

#: A request macro: ``#define KVM_X _IO(...)``, ``_IOR``, ``_IOW`` or ``_IOWR``.
REQUEST_MACRO = re.compile(r"^#define (KVM_[A-Z0-9_]+)\s+_IO(?:R|W|WR)?\(")
CAP_MACRO = re.compile(r"^#define (KVM_CAP_[A-Z0-9_]+)\s+\S")


def _cc() -> str:
    return os.environ.get("CC", "cc")


def header_macros(pattern: re.Pattern[str]) -> list[str]:
    """The names of the macros of ``<linux/kvm.h>`` (as the preprocessor sees it) matching ``pattern``."""
    out = subprocess.run([_cc(), "-dM", "-E", "-include", "linux/kvm.h", "-x", "c", "-"],
                         input="", capture_output=True, text=True, check=True).stdout
    return sorted({m.group(1) for line in out.splitlines() if (m := pattern.match(line))})


def requests(prelude: str) -> list[str]:
    """The request macros this architecture can evaluate after ``prelude`` (some name other
    architectures' structs: each one the compiler rejects is dropped)."""
    keep = header_macros(REQUEST_MACRO)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        for _ in range(len(keep) + 1):
            lines = [prelude] + [f"unsigned long probe_{i} = (unsigned long)({m});" for i, m in enumerate(keep)]
            offset = prelude.count("\n") + 2  # line of probe_0
            with open(src, "w") as f:
                f.write("\n".join(lines) + "\n")
            proc = subprocess.run([_cc(), "-fsyntax-only", src], capture_output=True, text=True)
            if proc.returncode == 0:
                return keep
            bad = {int(m.group(1)) - offset for m in re.finditer(r"probe\.c:(\d+):\d+: error", proc.stderr)}
            bad = {i for i in bad if 0 <= i < len(keep)}
            if not bad:
                raise RuntimeError(f"cannot evaluate the KVM ioctl macros:\n{proc.stderr[:2000]}")
            keep = [m for i, m in enumerate(keep) if i not in bad]
    return keep


def named_table(name: str, macros: list[str]) -> str:
    """C source for ``const struct minivmm_named NAME[]`` with one ``{"MACRO", MACRO}`` row per macro,
    and ``NAME_count``."""
    rows = "".join(f'    {{"{m}", (unsigned long)({m})}},\n' for m in macros)
    return (f"const struct minivmm_named {name}[] = {{\n{rows}}};\n"
            f"const int {name}_count = {len(macros)};\n")
