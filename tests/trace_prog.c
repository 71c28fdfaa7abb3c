/*
 * A VMM set-up with a known sequence, for the tests of `minivmm trace` and
 * scripts/bench_trace_accuracy.py. Built statically (gcc -static) so the tracer is checked on the kind
 * of binary where LD_PRELOAD cannot help.
 *
 * Sequence: KVM_GET_API_VERSION, KVM_CREATE_VM, N_IOEVENTFD x KVM_IOEVENTFD (MMIO, 4 bytes, datamatch i),
 * KVM_SET_USER_MEMORY_REGION slot 0 (where the kernel may wait for the grace periods the
 * registrations started), KVM_CREATE_VCPU 0, then NON_KVM non-KVM system calls (getppid, and a
 * TIOCGWINSZ ioctl on stdin) that must not stop the tracee, and exit with EXIT_CODE.
 *
 * Each KVM ioctl is timed here with clock_gettime(CLOCK_MONOTONIC) right around the call, and
 * printed to stderr as: "self <name> <ns>". Arguments: [n_ioeventfd] [exit_code] [mode], where mode is
 * "plain", "fork" (the set-up runs in a forked child that execs this program again), "signal"
 * (raise SIGUSR1 into a handler, then SIGTERM ourselves at the end) or "region2" (after slot 0, a
 * KVM_SET_USER_MEMORY_REGION2 for slot 1, read-only at 4 GiB; exit 6 if the headers or the kernel
 * lack it, 7 if the kernel offers it and refuses this call) or "vms": three VMs, as a VMM that probes
 * may make them: a probe VM (KVM_CHECK_EXTENSION on it, then closed), the set-up above whose vCPU then
 * runs a one-instruction guest (HLT) once, and a second VM with a memslot; every fd is closed at the end
 * ("vms-norun": the same without the run), or "attach": a VM and a vCPU, then "ready" on stdout; after a
 * byte on stdin, two ioeventfds registered and one deassigned (as a guest driver enabling a virtqueue
 * makes a VMM do), "registered"; then it waits for stdin to end, and exits 0; or "checks N": N x
 * KVM_CHECK_EXTENSION on the system fd (a long trace), then exit 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define NON_KVM 1000

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int timed(const char *name, int fd, unsigned long req, unsigned long arg)
{
    int64_t t0 = now_ns();
    int ret = ioctl(fd, req, arg);
    int64_t t1 = now_ns();
    int err = errno;
    fprintf(stderr, "self %s %lld\n", name, (long long)(t1 - t0));
    if (ret < 0) {
        fprintf(stderr, "%s: %s\n", name, strerror(err));
        exit(3);
    }
    return ret;
}

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig)
{
    (void)sig;
    got_usr1 = 1;
}

/* vCPU 0 of vm runs "hlt" at guest-physical 0 in real mode, once: its first KVM_RUN returns KVM_EXIT_HLT. */
static int run_hlt(int kvm, int vm, int vcpu, unsigned char *ram)
{
    struct kvm_sregs sregs;
    struct kvm_regs regs;
    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    (void)vm;
    if (run == MAP_FAILED)
        return -1;
    ram[0] = 0xf4;
    ioctl(vcpu, KVM_GET_SREGS, &sregs);
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    ioctl(vcpu, KVM_SET_SREGS, &sregs);
    memset(&regs, 0, sizeof regs);
    regs.rflags = 2;
    ioctl(vcpu, KVM_SET_REGS, &regs);
    int ret = timed("KVM_RUN", vcpu, KVM_RUN, 0);
    int reason = (int)run->exit_reason;
    munmap(run, (size_t)size);
    return ret < 0 ? -1 : reason;
}

static int vms(int run)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        perror("/dev/kvm");
        return 4;
    }
    int probe = timed("KVM_CREATE_VM", kvm, KVM_CREATE_VM, 0);
    ioctl(probe, KVM_CHECK_EXTENSION, KVM_CAP_IRQFD);
    close(probe);

    int vm = timed("KVM_CREATE_VM", kvm, KVM_CREATE_VM, 0);
    int efd = eventfd(0, EFD_CLOEXEC);
    struct kvm_ioeventfd io = {.addr = 0xd0000050ULL, .len = 4, .fd = efd};
    timed("KVM_IOEVENTFD", vm, KVM_IOEVENTFD, (unsigned long)&io);
    size_t size = 2 << 20;
    unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .memory_size = size, .userspace_addr = (uint64_t)(uintptr_t)mem};
    timed("KVM_SET_USER_MEMORY_REGION", vm, KVM_SET_USER_MEMORY_REGION, (unsigned long)&region);
    int vcpu = timed("KVM_CREATE_VCPU", vm, KVM_CREATE_VCPU, 0);
    int reason = run ? run_hlt(kvm, vm, vcpu, mem) : KVM_EXIT_HLT;
    if (reason != KVM_EXIT_HLT) {
        fprintf(stderr, "the guest did not halt (exit reason %d)\n", reason);
        return 8;
    }

    int second = timed("KVM_CREATE_VM", kvm, KVM_CREATE_VM, 0);
    struct kvm_userspace_memory_region region2 = {
        .slot = 0, .memory_size = size, .userspace_addr = (uint64_t)(uintptr_t)mem};
    timed("KVM_SET_USER_MEMORY_REGION", second, KVM_SET_USER_MEMORY_REGION, (unsigned long)&region2);
    close(second);
    close(vcpu);
    close(vm);
    close(efd);
    close(kvm);
    printf("done vms\n");
    return 0;
}

static int attach(void)
{
    char c;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        perror("/dev/kvm");
        return 4;
    }
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    printf("ready\n");
    fflush(stdout);
    if (read(0, &c, 1) != 1)
        return 9;
    struct kvm_ioeventfd pio = {.addr = 0x6008, .len = 2, .fd = eventfd(0, EFD_CLOEXEC),
                                .flags = KVM_IOEVENTFD_FLAG_PIO};
    struct kvm_ioeventfd mmio = {.addr = 0xfe003000ULL, .len = 4, .fd = eventfd(0, EFD_CLOEXEC)};
    timed("KVM_IOEVENTFD", vm, KVM_IOEVENTFD, (unsigned long)&pio);
    timed("KVM_IOEVENTFD", vm, KVM_IOEVENTFD, (unsigned long)&mmio);
    pio.flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
    timed("KVM_IOEVENTFD", vm, KVM_IOEVENTFD, (unsigned long)&pio);
    printf("registered\n");
    fflush(stdout);
    while (read(0, &c, 1) > 0)
        ;
    close(vcpu);
    close(vm);
    return 0;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 6;
    int code = argc > 2 ? atoi(argv[2]) : 0;
    const char *mode = argc > 3 ? argv[3] : "plain";

    if (argc > 1 && strcmp(argv[1], "attach") == 0)
        return attach();
    if (argc > 2 && strcmp(argv[1], "checks") == 0) {
        int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
        if (kvm < 0)
            return 4;
        for (long i = atol(argv[2]); i > 0; i--)
            ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY);
        return 0;
    }
    if (argc > 1 && strncmp(argv[1], "vms", 3) == 0)
        return vms(strcmp(argv[1], "vms") == 0);
    if (strcmp(mode, "fork") == 0) {
        pid_t pid = fork();
        if (pid == 0) {
            char nbuf[16], cbuf[16];
            snprintf(nbuf, sizeof nbuf, "%d", n);
            snprintf(cbuf, sizeof cbuf, "%d", code);
            execl("/proc/self/exe", argv[0], nbuf, cbuf, "plain", (char *)NULL);
            _exit(126);
        }
        int status;
        waitpid(pid, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    }
    if (strcmp(mode, "signal") == 0) {
        signal(SIGUSR1, on_usr1);
        raise(SIGUSR1);
        if (!got_usr1)
            return 4;
    }

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        perror("/dev/kvm");
        return 4;
    }
    timed("KVM_GET_API_VERSION", kvm, KVM_GET_API_VERSION, 0);
    int vm = timed("KVM_CREATE_VM", kvm, KVM_CREATE_VM, 0);
    for (int i = 0; i < n; i++) {
        struct kvm_ioeventfd io;
        memset(&io, 0, sizeof io);
        io.addr = 0xd0000050ULL + (uint64_t)(i / 2) * 0x1000;
        io.len = 4;
        io.datamatch = (uint64_t)(i % 2);
        io.fd = eventfd(0, EFD_CLOEXEC);
        io.flags = KVM_IOEVENTFD_FLAG_DATAMATCH;
        timed("KVM_IOEVENTFD", vm, KVM_IOEVENTFD, (unsigned long)&io);
    }
    size_t size = 2 << 20;
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .flags = 0, .guest_phys_addr = 0, .memory_size = size, .userspace_addr = (uint64_t)(uintptr_t)mem,
    };
    timed("KVM_SET_USER_MEMORY_REGION", vm, KVM_SET_USER_MEMORY_REGION, (unsigned long)&region);
    if (strcmp(mode, "region2") == 0) {
#ifdef KVM_SET_USER_MEMORY_REGION2
        struct kvm_userspace_memory_region2 region2;
        memset(&region2, 0, sizeof region2);
        region2.slot = 1;
        region2.flags = KVM_MEM_READONLY;
        region2.guest_phys_addr = 0x100000000ULL;
        region2.memory_size = size;
        region2.userspace_addr = (uint64_t)(uintptr_t)mem;
        if (ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY2) <= 0)
            return 6;  /* the kernel has no KVM_SET_USER_MEMORY_REGION2: the test skips */
        if (ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &region2) < 0) {
            fprintf(stderr, "KVM_SET_USER_MEMORY_REGION2: %s\n", strerror(errno));
            return 7;  /* refused although offered: the test fails */
        }
#else
        return 6;
#endif
    }
    timed("KVM_CREATE_VCPU", vm, KVM_CREATE_VCPU, 0);

    struct winsize ws;
    for (int i = 0; i < NON_KVM; i++) {
        if (getppid() < 0)
            return 5;
        ioctl(0, TIOCGWINSZ, &ws);  /* a non-KVM ioctl: the filter lets it through without a stop */
    }
    printf("done %d\n", n);
    fflush(stdout);
    if (strcmp(mode, "signal") == 0)
        raise(SIGTERM);
    return code;
}
