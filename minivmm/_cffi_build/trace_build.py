"""Build-time only: the cffi (API mode) description of what ``minivmm trace`` needs from the system.

ptrace, waitpid, process_vm_readv, seccomp and prctl, with every constant and struct layout *declared*
(``...``) so that the C compiler supplies the values from the system headers (``<sys/ptrace.h>``,
``<sys/user.h>``, ``<linux/seccomp.h>``, ``<linux/filter.h>``, ``<linux/audit.h>``). What the tracer
knows of ``<linux/kvm.h>`` (request and capability names, argument struct layouts) is in
``minivmm._kvm``, built from the one description in kvm_header.py.

The one piece of C that is not a declaration is ``minivmm_trace_spawn``: between ``fork()`` and
``execve()`` the child may only make async-signal-safe calls, so the child's set-up (seccomp filter,
stop for the tracer, exec) is written in C and never returns to Python.
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
"""

SPAWN = r"""
/* Stages reported through the error pipe when the child cannot reach execve. */
#define MINIVMM_STAGE_SECCOMP 1
#define MINIVMM_STAGE_NO_NEW_PRIVS 2
#define MINIVMM_STAGE_EXEC 3

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
 * execve. Returns the child's pid (or -1) in the parent. A failure in the child is written to err_fd
 * as {stage, errno} and the child exits 127.
 */
static int minivmm_trace_spawn(const char *path, char *const argv[], char *const envp[],
                               const struct sock_fprog *prog, int err_fd)
{
    sigset_t none;
    pid_t pid = fork();
    if (pid != 0)
        return pid;
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
                        const struct sock_fprog *prog, int err_fd);
long minivmm_ptrace(long request, int pid, void *addr, void *data);
int minivmm_tgkill(int tgid, int tid, int sig);
int waitpid(int pid, int *status, int options);
ssize_t process_vm_readv(int pid, const struct iovec *local_iov, unsigned long liovcnt,
                         const struct iovec *remote_iov, unsigned long riovcnt, unsigned long flags);
int kill(int pid, int sig);
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
ffi.set_source("minivmm._trace", PRELUDE + ABIS + SPAWN)

if __name__ == "__main__":
    ffi.compile(verbose=True)
