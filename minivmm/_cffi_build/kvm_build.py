"""Build-time only: the cffi (API mode, out-of-line) description of the KVM uapi minivmm uses.

Every ioctl number, constant and struct layout here is *declared*, never given a value: cffi asks the C
compiler for the real ones from the system ``<linux/kvm.h>`` when the package is installed. Struct
declarations end in ``...;`` so cffi takes offsets and sizes from the compiler too; the anonymous
structs inside ``struct kvm_run``'s exit union get names through ``__typeof__`` typedefs so that they
can be partial as well.

The families ``KVM_EXIT_*`` and ``KVM_CAP_*`` are too long (and too arch-dependent) to list by hand:
they are read from the preprocessor's view of the header at build time, so the compiled module has
exactly the names this host's header has. So are the two name tables (every ioctl request, every
capability) that name a request or a capability wherever minivmm prints one, for ioctls it issued and
ioctls it traced alike. The argument structs and the header scanning are shared with the tracer's
module: see kvm_header.py.
"""

from __future__ import annotations

import os
import re
import sys

import cffi

# The shared description of <linux/kvm.h> sits beside this file; cffi runs build scripts by path, not
# as a package, so its directory is put on the path first.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvm_header  # noqa: E402

HEADER_PRELUDE = """
#include <errno.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <linux/kvm.h>

/* Names for the anonymous per-exit structs of struct kvm_run, so cffi can check their layout. */
typedef __typeof__(((struct kvm_run *)0)->io) kvm_run_io_t;
typedef __typeof__(((struct kvm_run *)0)->mmio) kvm_run_mmio_t;
typedef __typeof__(((struct kvm_run *)0)->fail_entry) kvm_run_fail_entry_t;
typedef __typeof__(((struct kvm_run *)0)->internal) kvm_run_internal_t;
typedef __typeof__(((struct kvm_run *)0)->system_event) kvm_run_system_event_t;
typedef __typeof__(((struct kvm_run *)0)->hw) kvm_run_hw_t;
typedef __typeof__(((struct kvm_run *)0)->ex) kvm_run_ex_t;
/* ... and for the union of struct kvm_irq_routing_entry. */
typedef __typeof__(((struct kvm_irq_routing_entry *)0)->u) kvm_irq_routing_entry_u_t;

/*
 * Fixed-signature wrappers: calling the variadic ioctl() from cffi would need a cast per call, and the
 * hot path (KVM_RUN) should not pay for it. cffi releases the GIL around each call, so one vCPU thread
 * blocked in KVM_RUN does not stop the others.
 */
static int minivmm_ioctl_ptr(int fd, unsigned long request, void *arg)
{
    return ioctl(fd, request, arg);
}

static int minivmm_ioctl_val(int fd, unsigned long request, unsigned long arg)
{
    return ioctl(fd, request, arg);
}

/*
 * The timed ioctl of `minivmm timing`: the two clock reads sit right beside the system call so that
 * nothing but the ioctl is inside the timed region (no Python, no argument conversion).
 */
static int minivmm_timed_ioctl_ptr(int fd, unsigned long request, void *arg, int64_t *elapsed_ns)
{
    struct timespec t0, t1;
    int ret;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    ret = ioctl(fd, request, arg);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *elapsed_ns = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    return ret;
}

static int minivmm_timed_ioctl_val(int fd, unsigned long request, unsigned long arg, int64_t *elapsed_ns)
{
    struct timespec t0, t1;
    int ret;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    ret = ioctl(fd, request, arg);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *elapsed_ns = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    return ret;
}

/*
 * The timed close of `minivmm timing`'s teardown step: closing the last reference to a VM runs
 * kvm_destroy_vm() inside this close(), so it is timed as the ioctls are, right beside the call.
 */
static int minivmm_timed_close(int fd, int64_t *elapsed_ns)
{
    struct timespec t0, t1;
    int ret;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    ret = close(fd);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *elapsed_ns = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    return ret;
}
"""

CDEF = """

/* --- ioctl numbers (values from <linux/kvm.h>) --- */
#define KVM_GET_API_VERSION ...
#define KVM_CHECK_EXTENSION ...
#define KVM_GET_VCPU_MMAP_SIZE ...
#define KVM_GET_SUPPORTED_CPUID ...
#define KVM_CREATE_VM ...
#define KVM_SET_USER_MEMORY_REGION ...
#define KVM_SET_TSS_ADDR ...
#define KVM_SET_IDENTITY_MAP_ADDR ...
#define KVM_IOEVENTFD ...
#define KVM_CREATE_IRQCHIP ...
#define KVM_CREATE_VCPU ...
#define KVM_RUN ...
#define KVM_GET_REGS ...
#define KVM_SET_REGS ...
#define KVM_GET_SREGS ...
#define KVM_SET_SREGS ...
#define KVM_SET_CPUID2 ...
#define KVM_SET_MP_STATE ...
#define KVM_CREATE_PIT2 ...
#define KVM_REGISTER_COALESCED_MMIO ...
#define KVM_UNREGISTER_COALESCED_MMIO ...
#define KVM_IRQFD ...
#define KVM_SET_GSI_ROUTING ...
#define KVM_ENABLE_CAP ...

#define KVM_API_VERSION ...
#define KVM_EXIT_IO_IN ...
#define KVM_EXIT_IO_OUT ...
#define KVM_INTERNAL_ERROR_EMULATION ...
#define KVM_MP_STATE_RUNNABLE ...

/* --- libc --- */
#define PROT_READ ...
#define PROT_WRITE ...
#define MAP_SHARED ...
#define MAP_PRIVATE ...
#define MAP_ANONYMOUS ...
#define MAP_NORESERVE ...
#define EFD_CLOEXEC ...
#define EFD_NONBLOCK ...
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
int eventfd(unsigned int initval, int flags);

/* --- structs (layouts from the header) --- */
struct kvm_mp_state {
    __u32 mp_state;
};

struct kvm_regs {
    __u64 rax, rbx, rcx, rdx;
    __u64 rsi, rdi, rsp, rbp;
    __u64 r8, r9, r10, r11;
    __u64 r12, r13, r14, r15;
    __u64 rip, rflags;
    ...;
};

struct kvm_segment {
    __u64 base;
    __u32 limit;
    __u16 selector;
    __u8 type;
    __u8 present, dpl, db, s, l, g, avl;
    __u8 unusable;
    ...;
};

struct kvm_dtable {
    __u64 base;
    __u16 limit;
    ...;
};

struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8;
    __u64 efer;
    __u64 apic_base;
    ...;
};

struct kvm_cpuid_entry2 {
    __u32 function;
    __u32 index;
    __u32 flags;
    __u32 eax;
    __u32 ebx;
    __u32 ecx;
    __u32 edx;
    ...;
};

struct kvm_cpuid2 {
    __u32 nent;
    struct kvm_cpuid_entry2 entries[];
    ...;
};

typedef struct { __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset; ...; } kvm_run_io_t;
typedef struct { __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write; ...; } kvm_run_mmio_t;
typedef struct { __u64 hardware_entry_failure_reason; __u32 cpu; ...; } kvm_run_fail_entry_t;
typedef struct { __u32 suberror; __u32 ndata; __u64 data[16]; ...; } kvm_run_internal_t;
typedef struct { __u32 type; __u32 ndata; __u64 data[16]; ...; } kvm_run_system_event_t;
typedef struct { __u64 hardware_exit_reason; ...; } kvm_run_hw_t;
typedef struct { __u32 exception; __u32 error_code; ...; } kvm_run_ex_t;

/* The per-exit members below share one union in the header; cffi takes each offset from the compiler. */
struct kvm_run {
    __u8 request_interrupt_window;
    __u8 immediate_exit;
    __u32 exit_reason;
    kvm_run_hw_t hw;
    kvm_run_fail_entry_t fail_entry;
    kvm_run_ex_t ex;
    kvm_run_io_t io;
    kvm_run_mmio_t mmio;
    kvm_run_internal_t internal;
    kvm_run_system_event_t system_event;
    ...;
};

int minivmm_ioctl_ptr(int fd, unsigned long request, void *arg);
int minivmm_ioctl_val(int fd, unsigned long request, unsigned long arg);
int minivmm_timed_ioctl_ptr(int fd, unsigned long request, void *arg, int64_t *elapsed_ns);
int minivmm_timed_ioctl_val(int fd, unsigned long request, unsigned long arg, int64_t *elapsed_ns);
int minivmm_timed_close(int fd, int64_t *elapsed_ns);
"""

# Families whose members differ between kernel versions and architectures: taken from the header as is.
_FAMILIES = re.compile(r"^#define (KVM_EXIT_[A-Z0-9_]+|KVM_CAP_[A-Z0-9_]+|KVM_SYSTEM_EVENT_[A-Z_]+)\s+\S")
_NOT_A_VALUE = {"KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT"}  # already declared above


def _header_families() -> list[str]:
    """Return the KVM_EXIT_*, KVM_CAP_* and KVM_SYSTEM_EVENT_* macro names this host's header defines."""
    return [n for n in kvm_header.header_macros(_FAMILIES) if n not in _NOT_A_VALUE]


_requests = kvm_header.requests(HEADER_PRELUDE)
_has_region2 = "KVM_SET_USER_MEMORY_REGION2" in _requests

ffi = cffi.FFI()
ffi.cdef(kvm_header.TYPES + kvm_header.ARGUMENT_STRUCTS + (kvm_header.REGION2_STRUCT if _has_region2 else "")
         + CDEF + kvm_header.NAMED_TABLES_CDEF
         + "\n".join(f"#define {name} ..." for name in _header_families()))
ffi.set_source("minivmm._kvm", HEADER_PRELUDE + kvm_header.NAMED_STRUCT_C
               + kvm_header.named_table("minivmm_kvm_requests", _requests)
               + kvm_header.named_table("minivmm_kvm_caps", kvm_header.header_macros(kvm_header.CAP_MACRO)))

if __name__ == "__main__":
    ffi.compile(verbose=True)
