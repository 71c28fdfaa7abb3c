"""Build-time only: the cffi (API mode) description of what ``minivmm trace`` needs from the system.

ptrace, waitpid, process_vm_readv, seccomp and prctl, with every constant and struct layout *declared*
(``...``) so that the C compiler supplies the values from the system headers (``<sys/ptrace.h>``,
``<sys/user.h>``, ``<linux/seccomp.h>``, ``<linux/filter.h>``, ``<linux/audit.h>``). What the tracer
knows of ``<linux/kvm.h>`` (request and capability names, argument struct layouts) is in
``minivmm._kvm``, built from the one description in kvm_header.py.

Two pieces of C are not declarations. ``minivmm_trace_spawn``: between ``fork()`` and ``execve()`` the
child may only make async-signal-safe calls, so the child's set-up (seccomp filter, stop for the tracer,
exec) is written in C and never returns to Python. ``minivmm_trace_wait`` and the stops it takes: the
part of a stop the tracee waits for runs without the interpreter (at a KVM ioctl's seccomp stop the
registers, the argument struct, the fd's /proc link and the resume; at its exit stop the result; under
``-p`` any other system call's stops); the tracer decides in Python, through ``struct minivmm_fast``,
which stops may end there.
"""

from __future__ import annotations

import os
import subprocess

import cffi

PRELUDE = """
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <time.h>
#include <sched.h>
"""

SPAWN = r"""
/* Stages reported through the error pipe when the child cannot reach execve. */
#define MINIVMM_STAGE_SECCOMP 1
#define MINIVMM_STAGE_NO_NEW_PRIVS 2
#define MINIVMM_STAGE_EXEC 3
#define MINIVMM_STAGE_OUTPUT 4

static void minivmm_child_fail(int err_fd, int stage)
{
    int report[2] = {stage, errno};
    ssize_t n = write(err_fd, report, sizeof(report));
    (void)n;
    _exit(127);
}

/*
 * fork(); in the child: default SIGPIPE/SIGXFSZ (Python ignores them and execve would keep that),
 * an empty signal mask, the seccomp filter (without no_new_privs where the caller may install filters
 * anyway, e.g. root, so set-uid helpers keep working), then stop until the tracer has seized us, then
 * execve. With out_fd >= 0, the child's standard output and error are that file. Returns the child's
 * pid (or -1) in the parent. A failure in the child is written to err_fd as {stage, errno} and the
 * child exits 127.
 */
static int minivmm_trace_spawn(const char *path, char *const argv[], char *const envp[],
                               const struct sock_fprog *prog, int err_fd, int out_fd)
{
    sigset_t none;
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    if (out_fd >= 0 && (dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0))
        minivmm_child_fail(err_fd, MINIVMM_STAGE_OUTPUT);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, prog) != 0) {
        if (errno != EACCES)
            minivmm_child_fail(err_fd, MINIVMM_STAGE_SECCOMP);
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
            minivmm_child_fail(err_fd, MINIVMM_STAGE_NO_NEW_PRIVS);
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, prog) != 0)
            minivmm_child_fail(err_fd, MINIVMM_STAGE_SECCOMP);
    }
    kill(getpid(), SIGSTOP);
    execve(path, argv, envp);
    minivmm_child_fail(err_fd, MINIVMM_STAGE_EXEC);
    return -1;
}

/* glibc's ptrace() is variadic; a fixed signature lets cffi call it without a cast per call. */
static long minivmm_ptrace(long request, int pid, void *addr, void *data)
{
    return ptrace((enum __ptrace_request)request, pid, addr, data);
}

static int minivmm_tgkill(int tgid, int tid, int sig)
{
    return (int)syscall(SYS_tgkill, tgid, tid, sig);
}
"""

STOP = r"""
/*
 * The tracer's hot path in C: the seccomp stop of a KVM ioctl (see minivmm/trace/tracer.py). What the
 * tracee waits for while it is stopped is done here, without the interpreter: the registers, the
 * argument struct, the fd's /proc link and, when nothing else must be learnt first, PTRACE_CONT. The
 * tracer's bookkeeping (Python) follows while the tracee runs.
 */
#define MINIVMM_FAST_FDS 1024
#define MINIVMM_RAW_MAX 4096
/* raw_len when no bytes were taken: the request has no argument struct / the struct is unreadable
   (a bad pointer: the kernel answers EFAULT) / the tracer must take it itself (an _IOC_NR shared by
   two decoded requests). */
#define MINIVMM_RAW_NONE (-1)
#define MINIVMM_RAW_UNREADABLE (-2)
#define MINIVMM_RAW_LEFT (-3)
/* Room for an fd's /proc link ("anon_inode:kvm-vcpu:N", "/dev/kvm", or the start of any other). */
#define MINIVMM_LINK_MAX 96
/* link_len when the C path did not read the link (the tracer reads it, or knows it) / could not. */
#define MINIVMM_LINK_UNREAD (-1)
#define MINIVMM_LINK_GONE (-2)

/* What the tracer tells the stop path; written only by the tracer's thread, between stops. */
struct minivmm_fast {
    int one_stop;                   /* a native KVM ioctl needs no exit stop (kernel clock, spawned) */
    int64_t poll_ns;                /* after a stop, poll this long for the next before sleeping (0 while
                                       the host is busy: the tracer looks every 0.1 s) */
    int attached;                   /* -p: every system call stops at its entry and exit (no filter) */
    uint32_t kvm_type;              /* KVMIO, the _IOC_TYPE of every KVM request */
    uint32_t kvm_run;               /* KVM_RUN's request number */
    uint32_t request_of_nr[256];    /* by _IOC_NR: the decoded request with that number */
    int32_t size_of_nr[256];        /* its argument struct's size; 0: none; -1: ambiguous nr */
    /* Per fd, true in every live traced process that uses KVM: what the fd is is known (no /proc
       link to read) / it is a vCPU whose first KVM_RUN has returned (its later ones are only counted). */
    unsigned char link_known[MINIVMM_FAST_FDS];
    unsigned char run_done[MINIVMM_FAST_FDS];
};

/* One waitpid report, and for a KVM ioctl's seccomp stop what it was and what was done. */
struct minivmm_stop {
    int tid;
    int status;
    int64_t now_ns;                 /* CLOCK_MONOTONIC when waitpid returned */
    int seccomp;                    /* 1: the fields below are set; 0: not a seccomp stop */
    int error;                      /* errno of PTRACE_GETREGS or the resume (seccomp stays 0 / resumed 0) */
    int compat;                     /* a 32-bit ABI (i386 or x32) */
    uint32_t fd;
    uint32_t request;
    uint64_t arg;
    int resumed;                    /* resumed with PTRACE_CONT here */
    int later_run;                  /* a KVM_RUN after its vCPU's first returned (resumed, not recorded) */
    int passed;                     /* -p: a stop at another system call's entry or exit, resumed here */
    int exited;                     /* a KVM ioctl's exit stop (not -p, not KVM_RUN): ret read, resumed */
    int64_t ret;                    /* its result, as the ABI returns it (sign-extended) */
    int raw_len;                    /* bytes in raw, or MINIVMM_RAW_* */
    unsigned char raw[MINIVMM_RAW_MAX];
    int link_len;                   /* bytes of the fd's /proc link in link, or MINIVMM_LINK_* */
    char link[MINIVMM_LINK_MAX];
};

static int64_t minivmm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void minivmm_capture(struct minivmm_stop *stop, const struct minivmm_fast *fast)
{
    unsigned nr = stop->request & 0xFF;
    int32_t size = fast->request_of_nr[nr] == stop->request ? fast->size_of_nr[nr] : 0;
    if (size < 0 || size > MINIVMM_RAW_MAX) {
        stop->raw_len = MINIVMM_RAW_LEFT;
        return;
    }
    if (size == 0) {
        stop->raw_len = MINIVMM_RAW_NONE;
        return;
    }
    struct iovec local = { stop->raw, (size_t)size };
    struct iovec remote = { (void *)(uintptr_t)stop->arg, (size_t)size };
    stop->raw_len = process_vm_readv(stop->tid, &local, 1, &remote, 1, 0) == size ? size : MINIVMM_RAW_UNREADABLE;
}

/* At a KVM ioctl's seccomp stop of `tid`: fill `stop`; resume the tracee when `fast` says nothing else
   must happen first. Returns 0, or -1 with stop->error set when the registers cannot be read. */
static int minivmm_trace_stop(int tid, struct minivmm_stop *stop, const struct minivmm_fast *fast)
{
    struct user_regs_struct regs;
    stop->tid = tid;
    stop->seccomp = 0;
    stop->resumed = 0;
    stop->later_run = 0;
    stop->error = 0;
    stop->link_len = MINIVMM_LINK_UNREAD;
    if (ptrace(PTRACE_GETREGS, tid, NULL, &regs) != 0) {
        stop->error = errno;
        return -1;
    }
    /* Which ABI: the filter stops only ioctl, whose number differs in each (orig_rax holds it). */
    stop->compat = regs.orig_rax != SYS_ioctl;
    if (stop->compat && (long)regs.orig_rax == MINIVMM_NR_IOCTL_I386) {
        stop->fd = (uint32_t)regs.rbx;
        stop->request = (uint32_t)regs.rcx;
        stop->arg = (uint32_t)regs.rdx;
    } else {
        stop->fd = (uint32_t)regs.rdi;
        stop->request = (uint32_t)regs.rsi;
        stop->arg = stop->compat ? (uint32_t)regs.rdx : regs.rdx;
    }
    stop->seccomp = 1;
    int fast_fd = !stop->compat && stop->fd < MINIVMM_FAST_FDS;
    if (stop->request == fast->kvm_run) {
        stop->raw_len = MINIVMM_RAW_NONE;
        if (!(fast_fd && fast->run_done[stop->fd]))
            return 0;
        stop->later_run = 1;
    } else {
        minivmm_capture(stop, fast);
        if (!(fast->one_stop && fast_fd && stop->raw_len != MINIVMM_RAW_LEFT))
            return 0;
        if (!fast->link_known[stop->fd]) {
            /* The fd's first KVM ioctl here: what it is, read while the call waits (the fd could be
               closed and reused once it goes on). */
            char path[64];
            snprintf(path, sizeof(path), "/proc/%d/fd/%u", tid, stop->fd);
            ssize_t n = readlink(path, stop->link, sizeof(stop->link));
            stop->link_len = n < 0 ? MINIVMM_LINK_GONE : (int)n;
        }
    }
    if (ptrace(PTRACE_CONT, tid, NULL, NULL) != 0 && errno != ESRCH) {  /* ESRCH: killed meanwhile */
        stop->error = errno;
        return 0;
    }
    stop->resumed = 1;
    return 0;
}

/* -p: a syscall stop (entry or exit) of anything but a KVM ioctl is resumed here with PTRACE_SYSCALL
   (stop->passed), as the tracer would; a KVM ioctl's, or one whose registers cannot be read, is left to
   the tracer, which pairs its entry with its exit. An ioctl is told from its number in each ABI (the
   i386 one takes its request in ecx), as minivmm.trace.syscalls.IOCTL_NUMBERS does. */
static void minivmm_pass_syscall(int tid, struct minivmm_stop *stop, const struct minivmm_fast *fast)
{
    struct user_regs_struct regs;
    if (ptrace(PTRACE_GETREGS, tid, NULL, &regs) != 0)
        return;
    long nr = (long)regs.orig_rax;
    if (nr == SYS_ioctl || nr == MINIVMM_NR_IOCTL_X32 || nr == MINIVMM_NR_IOCTL_I386) {
        uint32_t request = (uint32_t)(nr == MINIVMM_NR_IOCTL_I386 ? regs.rcx : regs.rsi);
        if (((request >> 8) & 0xFF) == fast->kvm_type)
            return;
    }
    if (ptrace(PTRACE_SYSCALL, tid, NULL, NULL) != 0 && errno != ESRCH)
        return;  /* the tracer tries again and reports the error */
    stop->passed = 1;
}

/* Not -p: a syscall stop is always the exit stop the tracer asked for (PTRACE_SYSCALL at a KVM ioctl's
   seccomp stop, where there is no kernel clock or the call is 32-bit). Its result is read and the tracee
   resumed here (stop->exited), except a KVM_RUN's: whether a first run returned an exit decides what
   the tracer does next, before the vCPU goes on. */
static void minivmm_exit_stop(int tid, struct minivmm_stop *stop, const struct minivmm_fast *fast)
{
    struct user_regs_struct regs;
    if (ptrace(PTRACE_GETREGS, tid, NULL, &regs) != 0)
        return;
    int i386 = (long)regs.orig_rax == MINIVMM_NR_IOCTL_I386;
    uint32_t request = (uint32_t)(i386 ? regs.rcx : regs.rsi);
    if (request == fast->kvm_run)
        return;
    stop->ret = i386 ? (int64_t)(int32_t)regs.rax : (int64_t)regs.rax;
    if (ptrace(PTRACE_CONT, tid, NULL, NULL) != 0 && errno != ESRCH)
        return;  /* the tracer reads it again and reports the error */
    stop->exited = 1;
}

/* waitpid(-1, __WALL) into `stop` (polled with WNOHANG for fast->poll_ns first), and at a seccomp
   stop minivmm_trace_stop. Returns the tid, or -1 with errno (EINTR: a signal for the tracer; ECHILD:
   nothing left to wait for). A signal for the tracer while it polls waits for the poll's end. */
static int minivmm_trace_wait(struct minivmm_stop *stop, const struct minivmm_fast *fast)
{
    int status;
    int tid = 0;
    if (fast->poll_ns > 0) {
        /* On a host whose idle CPUs halt (a guest without halt-polling, say), a tracer that sleeps
           between two close stops is woken from a halted CPU each time: polling a few tens of us
           answers the next stop at once, as KVM's own halt-polling does for a vCPU. */
        int64_t until = minivmm_now_ns() + fast->poll_ns;
        for (;;) {
            tid = waitpid(-1, &status, __WALL | WNOHANG);
            if (tid != 0 || minivmm_now_ns() >= until)
                break;
            sched_yield();
        }
    }
    if (tid == 0)
        tid = waitpid(-1, &status, __WALL);
    if (tid < 0)
        return -1;
    stop->now_ns = minivmm_now_ns();
    stop->tid = tid;
    stop->status = status;
    stop->seccomp = 0;
    stop->error = 0;
    stop->passed = 0;
    stop->exited = 0;
    if (status >> 8 == (SIGTRAP | (PTRACE_EVENT_SECCOMP << 8)) && WIFSTOPPED(status))
        minivmm_trace_stop(tid, stop, fast);
    else if (WIFSTOPPED(status) && WSTOPSIG(status) == (SIGTRAP | 0x80)) {
        if (fast->attached)
            minivmm_pass_syscall(tid, stop, fast);
        else
            minivmm_exit_stop(tid, stop, fast);
    }
    return tid;
}
"""

CDEF = """
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
typedef int32_t __s32;

/* --- ptrace (values from <sys/ptrace.h>) --- */
#define PTRACE_CONT ...
#define PTRACE_SYSCALL ...
#define PTRACE_GETREGS ...
#define PTRACE_GETSIGINFO ...
#define PTRACE_GETEVENTMSG ...
#define PTRACE_SETOPTIONS ...
#define PTRACE_DETACH ...
#define PTRACE_SEIZE ...
#define PTRACE_INTERRUPT ...
#define PTRACE_LISTEN ...
#define PTRACE_O_TRACESYSGOOD ...
#define PTRACE_O_TRACEFORK ...
#define PTRACE_O_TRACEVFORK ...
#define PTRACE_O_TRACECLONE ...
#define PTRACE_O_TRACEEXEC ...
#define PTRACE_O_TRACESECCOMP ...
#define PTRACE_O_EXITKILL ...
#define PTRACE_EVENT_FORK ...
#define PTRACE_EVENT_VFORK ...
#define PTRACE_EVENT_CLONE ...
#define PTRACE_EVENT_EXEC ...
#define PTRACE_EVENT_EXIT ...
#define PTRACE_EVENT_SECCOMP ...
#define PTRACE_EVENT_STOP ...
#define __WALL ...
#define WNOHANG ...
#define WUNTRACED ...

/* --- seccomp / classic BPF (values from <linux/seccomp.h>, <linux/filter.h>, <linux/audit.h>) --- */
#define SECCOMP_RET_ALLOW ...
#define SECCOMP_RET_TRACE ...
#define BPF_LD ...
#define BPF_W ...
#define BPF_ABS ...
#define BPF_ALU ...
#define BPF_AND ...
#define BPF_JMP ...
#define BPF_JEQ ...
#define BPF_K ...
#define BPF_RET ...
#define AUDIT_ARCH_X86_64 ...
#define AUDIT_ARCH_I386 ...
#define SYS_ioctl ...
#define MINIVMM_NR_IOCTL_I386 ...
#define MINIVMM_NR_IOCTL_X32 ...
#define MINIVMM_STAGE_SECCOMP ...
#define MINIVMM_STAGE_NO_NEW_PRIVS ...
#define MINIVMM_STAGE_EXEC ...
#define MINIVMM_STAGE_OUTPUT ...

struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; ...; };
struct sock_fprog { unsigned short len; struct sock_filter *filter; ...; };
struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; ...; };

/* --- registers and memory of the tracee --- */
struct user_regs_struct {
    unsigned long long orig_rax, rax, rbx, rcx, rdi, rsi, rdx, r10, r8, r9, rip;
    ...;
};
struct iovec { void *iov_base; size_t iov_len; ...; };
typedef struct { int si_signo; int si_errno; int si_code; ...; } siginfo_t;

int minivmm_trace_spawn(const char *path, char *const argv[], char *const envp[],
                        const struct sock_fprog *prog, int err_fd, int out_fd);
long minivmm_ptrace(long request, int pid, void *addr, void *data);
int minivmm_tgkill(int tgid, int tid, int sig);
int waitpid(int pid, int *status, int options);
ssize_t process_vm_readv(int pid, const struct iovec *local_iov, unsigned long liovcnt,
                         const struct iovec *remote_iov, unsigned long riovcnt, unsigned long flags);
int kill(int pid, int sig);

/* --- the seccomp stop's hot path (STOP) --- */
#define MINIVMM_FAST_FDS ...
#define MINIVMM_RAW_MAX ...
#define MINIVMM_RAW_NONE ...
#define MINIVMM_RAW_UNREADABLE ...
#define MINIVMM_RAW_LEFT ...
#define MINIVMM_LINK_MAX ...
#define MINIVMM_LINK_UNREAD ...
#define MINIVMM_LINK_GONE ...
struct minivmm_fast {
    int one_stop;
    int64_t poll_ns;
    int attached;
    uint32_t kvm_type;
    uint32_t kvm_run;
    uint32_t request_of_nr[...];
    int32_t size_of_nr[...];
    unsigned char link_known[...];
    unsigned char run_done[...];
    ...;
};
struct minivmm_stop {
    int tid;
    int status;
    int64_t now_ns;
    int seccomp;
    int error;
    int compat;
    uint32_t fd;
    uint32_t request;
    uint64_t arg;
    int resumed;
    int later_run;
    int passed;
    int exited;
    int64_t ret;
    int raw_len;
    unsigned char raw[...];
    int link_len;
    char link[...];
    ...;
};
int minivmm_trace_stop(int tid, struct minivmm_stop *stop, const struct minivmm_fast *fast);
int minivmm_trace_wait(struct minivmm_stop *stop, const struct minivmm_fast *fast);
"""


def _abi_number(header: str, macro: str) -> str:
    """The value of ``macro`` in ``header`` as the preprocessor expands it (e.g. ``__NR_ioctl`` of the i386
    ABI, whose header cannot be included beside the x86-64 one: their macros share names); ``-1`` where
    the system has no such header."""
    cc = os.environ.get("CC", "cc")
    proc = subprocess.run([cc, "-E", "-P", "-x", "c", "-"], input=f"#include <{header}>\nMINIVMM_VALUE {macro}\n",
                          capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("MINIVMM_VALUE ")), "")
    value = line[len("MINIVMM_VALUE "):].strip()
    return value if proc.returncode == 0 and value and value != macro else "-1"


ffi = cffi.FFI()
ffi.cdef(CDEF)
# ioctl's number in the two other x86 system-call ABIs a tracee may use (the seccomp filter and the tracer
# tell the three apart by it).
ABIS = (f"#define MINIVMM_NR_IOCTL_I386 ({_abi_number('asm/unistd_32.h', '__NR_ioctl')})\n"
        f"#define MINIVMM_NR_IOCTL_X32 ({_abi_number('asm/unistd_x32.h', '__NR_ioctl')})\n")
ffi.set_source("minivmm._trace", PRELUDE + ABIS + SPAWN + STOP)

if __name__ == "__main__":
    ffi.compile(verbose=True)
