/*
 * The seccomp filter of scripts/bench_stop_mechanisms.c and scripts/trace_overhead_prog.c: `action` for
 * an x86-64 ioctl whose request is a KVM one (_IOC_TYPE, bits 8..15, is KVMIO), SECCOMP_RET_ALLOW for
 * every other system call; the shape of minivmm trace's own filter
 * (minivmm.trace.syscalls.seccomp_program, which also stops the i386 and x32 ioctls).
 */
#ifndef MINIVMM_KVM_SECCOMP_FILTER_H
#define MINIVMM_KVM_SECCOMP_FILTER_H

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Install the filter on the calling thread (and what it starts), with no_new_privs; seccomp()'s result. */
static int install_kvm_filter(uint32_t action, unsigned int flags)
{
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
        BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xFF00),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, KVMIO << 8, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, action),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { .len = sizeof(code) / sizeof(code[0]), .filter = code };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        return -1;
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

#endif
