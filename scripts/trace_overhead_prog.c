/*
 * The traced program of scripts/bench_trace_overhead.py: it times its own system calls with
 * clock_gettime(CLOCK_MONOTONIC) and prints one line per batch, so the cost a tracer adds is what this
 * program sees (the tracer's stops included).
 *
 * Modes (argv[1]):
 *   setup REPS      REPS times a VM set-up shaped like QEMU's: system-fd probes, KVM_CREATE_VM, a memslot,
 *                   the irqchip and PIT, ioeventfds, then two vCPUs each with the register/MSR/LAPIC/event
 *                   get-and-set rounds QEMU makes at reset; prints "setup NS NS ..." per repetition: each
 *                   KVM ioctl's own time, in the order they were made. A 30 ms pause (outside every timed call) before the
 *                   vCPUs lets the grace period the registrations started end first, so no call stalls.
 *   check N BATCHES KVM_CHECK_EXTENSION on the system fd in a tight loop; "check N NS" per batch.
 *   getpid N BATCHES  getppid() (never cached by libc) in a tight loop; "getpid N NS" per batch.
 *   hold            print "ready", then block until stdin ends (keeps a tracer running meanwhile).
 *   go              print "ready", then wait for one byte on stdin before the modes that follow (a
 *                   tracer attaches meanwhile, with -p).
 *   seccomp         install, before the modes that follow, a seccomp filter of the same shape as
 *                   minivmm trace's (SECCOMP_RET_TRACE for a KVM ioctl, SECCOMP_RET_ALLOW for the rest)
 *                   with no tracer and no tracepoint: what a filter alone costs every other system
 *                   call (a KVM ioctl would fail with ENOSYS: follow it with getpid only).
 * Several modes can follow one another on one command line.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kvm_seccomp_filter.h"

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#define MAX_CALLS 256
static int64_t spent[MAX_CALLS];
static int calls;

static int kvm_ioctl(int fd, unsigned long req, void *arg)
{
    int64_t t0 = now_ns();
    int ret = ioctl(fd, req, arg);
    if (calls < MAX_CALLS)
        spent[calls++] = now_ns() - t0;
    return ret;
}

#define VAL(x) ((void *)(uintptr_t)(x))

static void vcpu_round(int vcpu, void *buf)
{
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_fpu fpu;
    struct kvm_lapic_state lapic;
    struct kvm_mp_state mp;
    struct kvm_vcpu_events events;
    struct kvm_xcrs xcrs;
    struct {
        struct kvm_msrs h;
        struct kvm_msr_entry e[4];
    } msrs;
    memset(&msrs, 0, sizeof msrs);
    msrs.h.nmsrs = 4;
    msrs.e[0].index = 0x10;        /* TSC */
    msrs.e[1].index = 0x174;       /* SYSENTER_CS */
    msrs.e[2].index = 0xc0000080;  /* EFER */
    msrs.e[3].index = 0xc0000081;  /* STAR */
    kvm_ioctl(vcpu, KVM_GET_REGS, &regs);
    kvm_ioctl(vcpu, KVM_SET_REGS, &regs);
    kvm_ioctl(vcpu, KVM_GET_SREGS, &sregs);
    kvm_ioctl(vcpu, KVM_SET_SREGS, &sregs);
    kvm_ioctl(vcpu, KVM_GET_FPU, &fpu);
    kvm_ioctl(vcpu, KVM_SET_FPU, &fpu);
    kvm_ioctl(vcpu, KVM_GET_LAPIC, &lapic);
    kvm_ioctl(vcpu, KVM_SET_LAPIC, &lapic);
    kvm_ioctl(vcpu, KVM_GET_MP_STATE, &mp);
    kvm_ioctl(vcpu, KVM_SET_MP_STATE, &mp);
    kvm_ioctl(vcpu, KVM_GET_VCPU_EVENTS, &events);
    kvm_ioctl(vcpu, KVM_SET_VCPU_EVENTS, &events);
    kvm_ioctl(vcpu, KVM_GET_MSRS, &msrs);
    kvm_ioctl(vcpu, KVM_SET_MSRS, &msrs);
    kvm_ioctl(vcpu, KVM_GET_XCRS, &xcrs);
    kvm_ioctl(vcpu, KVM_GET_XSAVE, buf);
}

static void setup(int kvm, int reps)
{
    static const int caps[] = {KVM_CAP_USER_MEMORY, KVM_CAP_IRQCHIP, KVM_CAP_IOEVENTFD, KVM_CAP_IRQFD,
                               KVM_CAP_NR_MEMSLOTS, KVM_CAP_MAX_VCPUS, KVM_CAP_PIT2, KVM_CAP_XSAVE};
    size_t ram = 2 << 20;
    void *mem = mmap(NULL, ram, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void *buf = calloc(1, 1 << 16);
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + 256 * sizeof(struct kvm_cpuid_entry2));
    for (int r = 0; r < reps; r++) {
        int fds[16], nfds = 0;
        calls = 0;
        kvm_ioctl(kvm, KVM_GET_API_VERSION, VAL(0));
        for (unsigned i = 0; i < sizeof caps / sizeof caps[0]; i++)
            kvm_ioctl(kvm, KVM_CHECK_EXTENSION, VAL(caps[i]));
        kvm_ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, VAL(0));
        cpuid->nent = 256;
        kvm_ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid);
        int vm = kvm_ioctl(kvm, KVM_CREATE_VM, VAL(0));
        if (vm < 0) {
            perror("KVM_CREATE_VM");
            exit(4);
        }
        for (unsigned i = 0; i < 4; i++)
            kvm_ioctl(vm, KVM_CHECK_EXTENSION, VAL(caps[i]));
        struct kvm_userspace_memory_region region = {
            .slot = 0, .guest_phys_addr = 0, .memory_size = ram, .userspace_addr = (uint64_t)(uintptr_t)mem};
        kvm_ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region);
        kvm_ioctl(vm, KVM_SET_TSS_ADDR, VAL(0xfffbd000));
        kvm_ioctl(vm, KVM_CREATE_IRQCHIP, VAL(0));
        struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
        kvm_ioctl(vm, KVM_CREATE_PIT2, &pit);
        for (int i = 0; i < 4; i++) {
            struct kvm_ioeventfd io = {.addr = 0xd0000050ULL + (uint64_t)i * 0x1000, .len = 4,
                                       .fd = eventfd(0, EFD_CLOEXEC)};
            fds[nfds++] = io.fd;
            kvm_ioctl(vm, KVM_IOEVENTFD, &io);
        }
        usleep(30000);
        int vcpus[2];
        for (int v = 0; v < 2; v++) {
            vcpus[v] = kvm_ioctl(vm, KVM_CREATE_VCPU, VAL(v));
            cpuid->nent = 256;
            kvm_ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid);
            kvm_ioctl(vcpus[v], KVM_SET_CPUID2, cpuid);
            for (int round = 0; round < 3; round++)
                vcpu_round(vcpus[v], buf);
        }
        printf("setup");
        for (int i = 0; i < calls; i++)
            printf(" %lld", (long long)spent[i]);
        printf("\n");
        fflush(stdout);
        for (int v = 0; v < 2; v++)
            close(vcpus[v]);
        close(vm);
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
    }
    free(cpuid);
    free(buf);
    munmap(mem, ram);
}

int main(int argc, char **argv)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "setup") == 0 && a + 1 < argc) {
            if (kvm < 0) {
                perror("/dev/kvm");
                return 4;
            }
            setup(kvm, atoi(argv[++a]));
        } else if ((strcmp(argv[a], "check") == 0 || strcmp(argv[a], "getpid") == 0) && a + 2 < argc) {
            int check = argv[a][0] == 'c';
            long n = atol(argv[a + 1]);
            int batches = atoi(argv[a + 2]);
            a += 2;
            if (check && kvm < 0) {
                perror("/dev/kvm");
                return 4;
            }
            for (int b = 0; b < batches; b++) {
                int64_t t0 = now_ns();
                for (long i = 0; i < n; i++) {
                    if (check)
                        ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY);
                    else
                        syscall(SYS_getppid);
                }
                printf("%s %ld %lld\n", check ? "check" : "getpid", n, (long long)(now_ns() - t0));
                fflush(stdout);
            }
        } else if (strcmp(argv[a], "go") == 0) {
            char c;
            printf("ready\n");
            fflush(stdout);
            if (read(0, &c, 1) != 1)
                return 9;
        } else if (strcmp(argv[a], "seccomp") == 0) {
            if (install_kvm_filter(SECCOMP_RET_TRACE, 0) != 0) {
                perror("seccomp");
                return 3;
            }
        } else if (strcmp(argv[a], "hold") == 0) {
            char c;
            printf("ready\n");
            fflush(stdout);
            while (read(0, &c, 1) > 0)
                ;
        } else {
            fprintf(stderr, "usage: %s [setup REPS] [check N BATCHES] [getpid N BATCHES] [hold] [go] [seccomp]\n", argv[0]);
            return 2;
        }
    }
    return 0;
}
