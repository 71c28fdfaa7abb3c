"""The tracer's system calls (ptrace, waitpid, process_vm_readv, the seccomp child) and its one errno
choke point.

Everything goes through the compiled cffi module ``minivmm._trace`` (see
minivmm/_cffi_build/trace_build.py): constants and struct layouts come from the system headers. A
failing call raises :class:`TraceOSError` from :func:`_check`, the only place that reads ``errno``.
"""

from __future__ import annotations

import errno as _errno
import os
import struct
from typing import Any

from minivmm._trace import ffi, lib
from minivmm.kvm.uapi import lib as kvm_lib

KVMIO = kvm_lib.KVMIO

__all__ = ["ffi", "lib", "TraceOSError", "SpawnError", "seccomp_kvm_filter", "spawn", "ptrace", "waitpid",
           "getregs", "read_memory", "event_message", "siginfo_signo", "tgkill"]


class TraceOSError(OSError):
    """A tracer system call failed; ``errno`` is the kernel's, ``call`` names the call."""

    def __init__(self, call: str, err: int) -> None:
        super().__init__(err, f"{call}: {os.strerror(err)} ({_errno.errorcode.get(err, err)})")
        self.call = call


class SpawnError(OSError):
    """The child could not install the filter or exec COMMAND; ``stage`` says which step failed."""

    def __init__(self, stage: str, err: int) -> None:
        super().__init__(err, f"{stage}: {os.strerror(err)}")
        self.stage = stage


def _check(ret: int, call: str) -> int:
    """The errno choke point: a negative return becomes TraceOSError naming ``call``."""
    if ret < 0:
        check_errno(call)
    return ret


def check_errno(call: str) -> None:
    """Raise TraceOSError for the errno of the call that just failed (the hot path tests the return
    value itself and comes here only on failure)."""
    raise TraceOSError(call, ffi.errno)


#: The three x86 system-call ABIs a tracee may call ioctl with, by the number the call has in each.
ABI_X86_64, ABI_X32, ABI_I386 = "x86-64", "x32", "i386"
IOCTL_NUMBERS = {lib.SYS_ioctl: ABI_X86_64, lib.MINIVMM_NR_IOCTL_X32: ABI_X32, lib.MINIVMM_NR_IOCTL_I386: ABI_I386}

Insn = tuple[str, int, str | None, str | None]  # op, k, jump-if-true label, jump-if-false label


def assemble(program: list[Insn | str]) -> list[tuple[int, int, int, int]]:
    """Classic BPF from a list of instructions and labels (a str is a label for the next instruction):
    ``("ld", offset)``, ``("and", mask)``, ``("jeq", k, true_label, false_label)`` (None: the next
    instruction), ``("ret", value)``. Returns (code, jt, jf, k) per instruction."""
    where: dict[str, int] = {}
    insns: list[Insn] = []
    for item in program:
        if isinstance(item, str):
            where[item] = len(insns)
        else:
            insns.append(item)
    codes = {"ld": lib.BPF_LD | lib.BPF_W | lib.BPF_ABS, "and": lib.BPF_ALU | lib.BPF_AND | lib.BPF_K,
             "jeq": lib.BPF_JMP | lib.BPF_JEQ | lib.BPF_K, "ret": lib.BPF_RET | lib.BPF_K}
    out = []
    for pc, (op, k, jt, jf) in enumerate(insns):
        rel = [0 if label is None else where[label] - pc - 1 for label in (jt, jf)]
        if not all(0 <= r < 256 for r in rel):
            raise ValueError("a BPF jump goes backwards or too far")
        out.append((codes[op], rel[0], rel[1], k & 0xFFFFFFFF))
    return out


def seccomp_program() -> list[tuple[int, int, int, int]]:
    """The filter's instructions: SECCOMP_RET_TRACE for ``ioctl(fd, request)`` with ``_IOC_TYPE(request)
    == KVMIO`` in any of the three x86 ABIs (x86-64, x32, i386), SECCOMP_RET_ALLOW for every other
    system call (so they never stop the tracee).

    ``_IOC_TYPE`` is bits 8..15 of the request (``_IOC_TYPESHIFT`` is 8 on every architecture); the
    kernel's ioctl takes ``unsigned int cmd``, so only the low 32 bits of args[1] matter, which on a
    little-endian machine are the first word of the 64-bit argument (a 32-bit ABI's argument is
    zero-extended into it)."""
    nr = ffi.offsetof("struct seccomp_data", "nr")
    arch = ffi.offsetof("struct seccomp_data", "arch")
    arg1_low = ffi.offsetof("struct seccomp_data", "args") + ffi.sizeof("__u64") * 1
    return assemble([
        ("ld", arch, None, None),
        ("jeq", lib.AUDIT_ARCH_X86_64, "x86-64", None),      # x86-64 and x32 share the arch
        ("jeq", lib.AUDIT_ARCH_I386, "i386", "allow"),
        "x86-64",
        ("ld", nr, None, None),
        ("jeq", lib.SYS_ioctl, "request", None),
        ("jeq", lib.MINIVMM_NR_IOCTL_X32, "request", "allow"),
        "i386",
        ("ld", nr, None, None),
        ("jeq", lib.MINIVMM_NR_IOCTL_I386, "request", "allow"),
        "request",
        ("ld", arg1_low, None, None),
        ("and", 0xFF00, None, None),
        ("jeq", KVMIO << 8, "trace", "allow"),
        "allow",
        ("ret", lib.SECCOMP_RET_ALLOW, None, None),
        "trace",
        ("ret", lib.SECCOMP_RET_TRACE, None, None),
    ])


def seccomp_kvm_filter() -> Any:
    """:func:`seccomp_program` as the kernel takes it; the returned cdata owns the program."""
    program = seccomp_program()
    filters = ffi.new("struct sock_filter[]", len(program))
    for slot, (code, jt, jf, k) in zip(filters, program):
        slot.code, slot.jt, slot.jf, slot.k = code, jt, jf, k
    prog = ffi.new("struct sock_fprog *")
    prog.len = len(program)
    prog.filter = filters
    return prog, filters  # the caller keeps both alive until the child has exec'd


_STAGES = {lib.MINIVMM_STAGE_SECCOMP: "installing the seccomp filter",
           lib.MINIVMM_STAGE_NO_NEW_PRIVS: "prctl(PR_SET_NO_NEW_PRIVS)",
           lib.MINIVMM_STAGE_EXEC: "execve",
           lib.MINIVMM_STAGE_OUTPUT: "redirecting its output"}


def spawn(path: str, argv: list[str], env: dict[str, str], output_fd: int = -1) -> int:
    """Fork a child that installs :func:`seccomp_kvm_filter`, stops itself with SIGSTOP and, once resumed,
    execs ``path``; with ``output_fd`` (>= 0) its standard output and error are that file. Returns the pid
    of the stopped child (waited for: it is in a stopped state).

    Raises SpawnError (with the child reaped) if the child failed before or at execve; since execve
    happens only after the tracer resumes the child, the caller learns an exec failure from
    :func:`exec_failure` after resuming.
    """
    prog, filters = seccomp_kvm_filter()
    keep = [ffi.new("char[]", a.encode()) for a in argv]
    c_argv = ffi.new("char *[]", keep + [ffi.NULL])
    keep_env = [ffi.new("char[]", f"{k}={v}".encode()) for k, v in env.items()]
    c_env = ffi.new("char *[]", keep_env + [ffi.NULL])
    c_path = ffi.new("char[]", path.encode())
    r, w = os.pipe()  # close-on-exec: a successful execve closes it, so EOF means "exec'd"
    pid = _check(lib.minivmm_trace_spawn(c_path, c_argv, c_env, prog, w, output_fd), "fork")
    os.close(w)
    _spawn_pipes[pid] = r
    del filters
    status = ffi.new("int *")
    while True:
        got = lib.waitpid(pid, status, lib.WUNTRACED)
        if got < 0 and ffi.errno == _errno.EINTR:
            continue
        _check(got, "waitpid")
        break
    if os.WIFSTOPPED(status[0]):
        return pid
    failure = exec_failure(pid)
    raise failure or SpawnError("starting the child", _errno.ECHILD)


_spawn_pipes: dict[int, int] = {}


def exec_failure(pid: int) -> SpawnError | None:
    """After the child was resumed: the SpawnError if it failed to exec, None once it has exec'd."""
    r = _spawn_pipes.pop(pid, None)
    if r is None:
        return None
    try:
        data = os.read(r, 8)
    finally:
        os.close(r)
    if len(data) < 8:
        return None
    stage, err = struct.unpack("ii", data)
    return SpawnError(_STAGES.get(stage, "the child"), err)


def ptrace(request: int, pid: int, addr: int = 0, data: Any = 0, call: str = "ptrace") -> int:
    """ptrace(request, pid, addr, data); ``data`` is an int or a cdata pointer."""
    d = data if isinstance(data, ffi.CData) else ffi.cast("void *", data)
    return _check(lib.minivmm_ptrace(request, pid, ffi.cast("void *", addr), d), call)


def waitpid(pid: int, options: int) -> tuple[int, int]:
    """waitpid(pid, options) -> (pid, status); (0, 0) with WNOHANG and nothing to report.

    EINTR is raised as TraceOSError (errno EINTR) so that the caller can look at its signal flags.
    """
    got = _check(lib.waitpid(pid, _status, options), "waitpid")
    return got, int(_status[0])


_status = ffi.new("int *")


_regs = ffi.new("struct user_regs_struct *")


def getregs(tid: int) -> Any:
    """The tracee's general registers (struct user_regs_struct; one buffer, valid until the next call)."""
    _check(lib.minivmm_ptrace(lib.PTRACE_GETREGS, tid, ffi.NULL, _regs), "ptrace(PTRACE_GETREGS)")
    return _regs


def event_message(tid: int) -> int:
    """PTRACE_GETEVENTMSG: the new pid at a fork/clone event, the former tid at an exec event."""
    msg = ffi.new("unsigned long *")
    ptrace(lib.PTRACE_GETEVENTMSG, tid, 0, msg, "ptrace(PTRACE_GETEVENTMSG)")
    return int(msg[0])


def siginfo_signo(tid: int) -> int | None:
    """The signal of a signal-delivery-stop, or None if the stop is a group-stop (GETSIGINFO: EINVAL)."""
    info = ffi.new("siginfo_t *")
    try:
        ptrace(lib.PTRACE_GETSIGINFO, tid, 0, info, "ptrace(PTRACE_GETSIGINFO)")
    except TraceOSError as e:
        if e.errno == _errno.EINVAL:
            return None
        raise
    return int(info.si_signo)


_iov_local = ffi.new("struct iovec *")
_iov_remote = ffi.new("struct iovec *")
_read_buf = ffi.new("char[]", 4096)


def read_memory(pid: int, addr: int, size: int) -> bytes:
    """``size`` bytes of the tracee's memory at ``addr`` (process_vm_readv): one argument struct."""
    _iov_local.iov_base, _iov_local.iov_len = _read_buf, size
    _iov_remote.iov_base, _iov_remote.iov_len = ffi.cast("void *", addr), size
    got = _check(lib.process_vm_readv(pid, _iov_local, 1, _iov_remote, 1, 0), "process_vm_readv")
    if got != size:
        raise TraceOSError("process_vm_readv (short read)", _errno.EFAULT)
    return bytes(ffi.buffer(_read_buf, size))


def tgkill(tgid: int, tid: int, sig: int) -> None:
    """Send ``sig`` to one thread."""
    _check(lib.minivmm_tgkill(tgid, tid, sig), "tgkill")


def kill(pid: int, sig: int) -> None:
    """Send ``sig`` to a process."""
    _check(lib.kill(pid, sig), "kill")
