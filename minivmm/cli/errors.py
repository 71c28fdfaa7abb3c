"""Exit codes, the mapping of run outcomes onto them, and the one error type the commands raise for bad
input (printed as one line, no traceback). Nothing below the CLI knows process exit codes."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minivmm.vmm.report import RunOutcome


class ExitCode(enum.IntEnum):
    """Every exit code ``minivmm`` uses (README's exit-code table). Run outcomes map onto these in
    :func:`outcome_exit_code`."""

    OK = 0              # every vCPU halted / the command did what was asked
    GUEST_FAILED = 1    # shutdown, entry failure, internal error, timeout
    BAD_INPUT = 2       # bad usage or bad input
    VIOLATION = 3       # the kernel broke a rule (the shadow or the --ftrace cross-check): only that
    KVM_UNAVAILABLE = 4  # /dev/kvm missing or not accessible: cannot run here (KVM selftests' skip code)
    GUEST_ERROR = 5     # the guest broke the VMM's protocol (e.g. its reported counts do not add up)
    INTERRUPTED = 130   # Ctrl-C
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
