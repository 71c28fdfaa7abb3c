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
    """Every exit code ``minivmm`` uses (the one table; README "Exit codes" repeats it for users).
    Run outcomes map onto these in :func:`outcome_exit_code`."""

    OK = 0              # every vCPU halted / the command did what was asked
    GUEST_FAILED = 1    # shutdown, entry failure, internal error, timeout; timing --baseline: a step regressed
    BAD_INPUT = 2       # bad usage or bad input (options, files, a --kvm path that is not a KVM device)
    VIOLATION = 3       # the kernel broke a rule (the shadow or the --ftrace cross-check): only that
    KVM_UNAVAILABLE = 4  # cannot run here: /dev/kvm missing or not accessible (KVM selftests' "skip")
    GUEST_ERROR = 5     # the guest broke the VMM's protocol (e.g. its reported counts do not add up)
    UNUSABLE = 125      # timing --baseline only: the measurement was unusable (git bisect run's "skip")
    INTERRUPTED = 130   # Ctrl-C (SIGINT)
    TERMINATED = 143    # SIGTERM


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
    exit 2 when the path names something that is not a KVM device (a usage mistake with ``--kvm``)."""
    code = ExitCode.KVM_UNAVAILABLE if e.errno in _CANNOT_RUN_HERE else ExitCode.BAD_INPUT
    return CliError(e.strerror or str(e), code)
