"""Exit codes and the one error type the commands raise for bad input (printed as one line, no traceback)."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Every exit code ``minivmm`` uses. Guest outcomes map onto these in ``RunOutcome.exit_code``."""

    OK = 0              # every vCPU halted / the command did what was asked
    GUEST_FAILED = 1    # shutdown, entry failure, internal error, timeout
    BAD_INPUT = 2       # bad usage or bad input, including a missing or inaccessible /dev/kvm
    VIOLATION = 3       # the shadow kernel model found an exit the kernel must not have delivered
    INTERRUPTED = 130   # Ctrl-C
    TERMINATED = 143    # SIGTERM


class CliError(Exception):
    """A user-facing error: ``message`` is printed as ``minivmm: error: message`` and ``code`` returned."""

    def __init__(self, message: str, code: ExitCode = ExitCode.BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code
