"""Exit codes, the mapping of run outcomes onto them, and the one error type the commands raise for bad
input (printed as one line, no traceback). Nothing below the CLI knows process exit codes.

This module is imported at start-up by every command: it imports nothing beyond the standard library.
"""

from __future__ import annotations

import enum
import errno

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time); mypy knows the name
if TYPE_CHECKING:
    from minivmm.vmm.outcome import RunOutcome


class ExitCode(enum.IntEnum):
    """Every exit code ``minivmm`` uses, each with its meaning: the one table. ``minivmm --help`` prints
    it (:func:`exit_code_table`) and tests/test_readme.py checks README's "Exit codes" against it. Run
    outcomes map onto these in :func:`outcome_exit_code`."""

    description: str

    def __new__(cls, value: int, description: str) -> ExitCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    OK = 0, "every vCPU halted, or the command did what was asked"
    GUEST_FAILED = 1, ("the guest failed (triple fault, entry failure, internal error such as an emulation "
                       "failure) or timed out; timing --baseline and compare --gate: a step regressed")
    BAD_INPUT = 2, ("bad usage or bad input: an unknown option or a bad value; a file that is missing, not a "
                    "regular file, empty, too large or malformed; a --kvm path that is not a KVM device")
    VIOLATION = 3, ("the kernel broke a rule: the shadow (or the --ftrace cross-check) found a violation, and "
                    "only that")
    KVM_UNAVAILABLE = 4, ("cannot run here: /dev/kvm (or --kvm) missing or not accessible (the KVM selftests' "
                          "skip code), or the installation is incomplete (a required package is missing)")
    GUEST_ERROR = 5, ("the guest broke the VMM's protocol (e.g. the counts it reports about itself do not add "
                      "up): a guest error, not a kernel one")
    WRITE_FAILED = 6, ("the output could not be written (standard output or a file: disk full, I/O error); a "
                       "file being replaced is left as it was")
    NO_RESOURCES = 7, ("out of a resource (file descriptors, memory or address space, threads): the message "
                       "names the limit to raise; everything opened is released")
    UNUSABLE = 125, ("timing --baseline and compare --gate only: the measurement was unusable (too noisy to "
                     "decide, KVM missing), git bisect run's skip")
    INTERRUPTED = 130, ("interrupted by Ctrl-C (SIGINT): every vCPU is stopped and reported, every resource "
                        "released")
    TERMINATED = 143, "terminated by SIGTERM: as for Ctrl-C"


def exit_code_table(width: int = 78) -> str:
    """The exit codes and their meanings, wrapped to ``width`` columns (``minivmm --help``)."""
    import textwrap

    lines = []
    for code in ExitCode:
        lines += textwrap.wrap(code.description, width, initial_indent=f"  {int(code):<5}",
                               subsequent_indent=" " * 7, break_on_hyphens=False)
    return "\n".join(lines)


#: The exit code of each run outcome, by the outcome's value (so this module stays cheap to import).
_OUTCOME_CODES: dict[str, ExitCode] = {
    "halted": ExitCode.OK,
    "failed": ExitCode.GUEST_FAILED,
    "timeout": ExitCode.GUEST_FAILED,
    "violation": ExitCode.VIOLATION,
    "guest_error": ExitCode.GUEST_ERROR,
    "interrupted": ExitCode.INTERRUPTED,
    "terminated": ExitCode.TERMINATED,
}


def outcome_exit_code(outcome: RunOutcome) -> ExitCode:
    """The process exit code for how a run ended."""
    return _OUTCOME_CODES[outcome.value]


def gate_exit_code(outcome: str) -> int:
    """The regression gate's outcome as the process exit code: pass 0, regressed 1, unusable 125 (git
    bisect run's skip); ``timing --baseline`` and ``compare --gate`` alike."""
    return int({"pass": ExitCode.OK, "regressed": ExitCode.GUEST_FAILED, "unusable": ExitCode.UNUSABLE}[outcome])


class CliError(Exception):
    """A user-facing error: ``message`` is printed as ``minivmm: error: message`` and ``code`` returned."""

    def __init__(self, message: str, code: ExitCode = ExitCode.BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CliError):
    """The command line itself is wrong (unknown option, missing argument, bad value): exit 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.BAD_INPUT)


#: errnos of a /dev/kvm that is simply not there for us: "cannot run here", not "you typed it wrong".
_CANNOT_RUN_HERE = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENXIO, errno.EROFS})


def kvm_unavailable(e: OSError) -> CliError:
    """The CliError for a ``KvmUnavailable``: exit 4 when the device is missing or not accessible,
    exit 2 when the path names something that is not a KVM device (a usage mistake with ``--kvm``);
    out of file descriptors or memory, the resource's error (exit 7)."""
    exhausted = resource_error(e)
    if exhausted is not None:
        return exhausted
    code = ExitCode.KVM_UNAVAILABLE if e.errno in _CANNOT_RUN_HERE else ExitCode.BAD_INPUT
    return CliError(e.strerror or str(e), code)


#: The modules minivmm cannot run without: its dependencies (pyproject.toml) and theirs, and its two
#: compiled cffi modules. One of them missing is a broken installation, not a bug in minivmm.
REQUIRED_MODULES = frozenset({"typer", "rich", "shellingham", "annotated_doc", "cffi", "_cffi_backend", "pycparser",
                              "capstone", "minivmm._kvm", "minivmm._trace"})


def missing_module_error(e: ImportError) -> CliError | None:
    """The one-line error (exit 4) for a required module that cannot be imported, naming it and the
    command that repairs the installation; None for any other import error (an optional package, such
    as matplotlib for --plot, is reported by the command that needs it)."""
    name = e.name or ""
    if name not in REQUIRED_MODULES and name.partition(".")[0] not in REQUIRED_MODULES:
        return None
    return CliError(f"the installation is incomplete: cannot import {name} ({e}); reinstall minivmm "
                    "(pip install . in its source tree)", ExitCode.KVM_UNAVAILABLE)


def resource_error(e: BaseException) -> CliError | None:
    """The one-line error (exit 7) for an exception that means the process or the system ran out of
    something, naming the limit to raise; None for any other exception.

    Recognised: EMFILE/ENFILE (file descriptors), MemoryError and ENOMEM (memory: under RLIMIT_AS an
    mmap, a thread's stack or an import fails this way), ENOSPC/EDQUOT outside an output (a full
    ``$TMPDIR`` where a private directory is made), a thread that cannot be started
    (``RuntimeError: can't start new thread``, and EAGAIN from clone) and a process that cannot be
    forked (EAGAIN from fork)."""
    import resource

    def limit(which: int, unit: int = 1, suffix: str = "") -> str:
        soft = resource.getrlimit(which)[0]
        return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // unit}{suffix}"

    err = e.errno if isinstance(e, OSError) else None
    if err == errno.EMFILE:
        message = (f"out of file descriptors (RLIMIT_NOFILE {limit(resource.RLIMIT_NOFILE)}): "
                   "raise it with `ulimit -n`")
    elif err == errno.ENFILE:
        message = "the system is out of file descriptors (ENFILE): raise fs.file-max with sysctl"
    elif isinstance(e, MemoryError) or err == errno.ENOMEM:
        message = (f"out of memory (RLIMIT_AS {limit(resource.RLIMIT_AS, 1 << 20, ' MiB')}): raise it with "
                   "`ulimit -v`, or free memory")
    elif err in (errno.ENOSPC, errno.EDQUOT) and isinstance(e, OSError):
        import os

        from minivmm.files import temporary_root
        where = f" for {e.filename!r}" if e.filename else ""
        tmp = (", or point TMPDIR at a directory with room"
               if e.filename and os.path.dirname(str(e.filename)) == temporary_root() else "")
        message = f"no space left on the device{where} ({errno.errorcode[err]}): free some space there{tmp}"
    elif (isinstance(e, RuntimeError) and "can't start new thread" in str(e)) or err == errno.EAGAIN:
        message = (f"cannot start a thread or process (RLIMIT_NPROC {limit(resource.RLIMIT_NPROC)}, RLIMIT_AS "
                   f"{limit(resource.RLIMIT_AS, 1 << 20, ' MiB')}): raise them with `ulimit -u` and `ulimit -v`")
    else:
        return None
    return CliError(message, ExitCode.NO_RESOURCES)
