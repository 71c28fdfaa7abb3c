/*
 * VMs that are destroyed, for the tests of what `minivmm trace` shows of a teardown. Argument: the mode.
 *
 *   probe       KVM_CREATE_VM, then close() of the VM fd at once (a VMM probing KVM): nothing pending.
 *   registered  KVM_CREATE_VM, one MMIO KVM_IOEVENTFD (its call_srcu() starts a normal grace period),
 *               KVM_CREATE_VCPU 0, then close() of the vCPU fd and the VM fd at once: the last close
 *               waits in kvm_destroy_vm()'s srcu_barrier() for the grace period and its callbacks.
 *   exit        KVM_CREATE_VM, one KVM_IOEVENTFD, then exit with every fd open: the VM is destroyed
 *               inside exit_group.
 *
 * The close of the VM fd is timed here with clock_gettime(CLOCK_MONOTONIC) right around the call and
 * printed to stderr as "self close <ns>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int checked(int ret, const char *what)
{
    if (ret < 0) {
        perror(what);
        exit(2);
    }
    return ret;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "probe";
    int kvm = checked(open("/dev/kvm", O_RDWR | O_CLOEXEC), "open /dev/kvm");
    int vm = checked(ioctl(kvm, KVM_CREATE_VM, 0), "KVM_CREATE_VM");
    int vcpu = -1;
    long long t0;

    if (strcmp(mode, "registered") == 0 || strcmp(mode, "exit") == 0) {
        struct kvm_ioeventfd io;

        memset(&io, 0, sizeof(io));
        io.addr = 0xd0000050;
        io.len = 4;
        io.fd = checked(eventfd(0, EFD_CLOEXEC), "eventfd");
        checked(ioctl(vm, KVM_IOEVENTFD, &io), "KVM_IOEVENTFD");
    }
    if (strcmp(mode, "exit") == 0)
        return 0;
    if (strcmp(mode, "registered") == 0) {
        vcpu = checked(ioctl(vm, KVM_CREATE_VCPU, 0), "KVM_CREATE_VCPU");
        close(vcpu);
    } else if (strcmp(mode, "probe") != 0) {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    t0 = now_ns();
    checked(close(vm), "close");
    fprintf(stderr, "self close %lld\n", now_ns() - t0);
    close(kvm);
    return 0;
}
