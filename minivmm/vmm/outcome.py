"""How a run ended: the outcome every vCPU thread, the supervisor and the CLI agree on.

Kept apart from :mod:`minivmm.vmm.report` (the report's dataclasses and rendering), which a boot imports
only once the run is over: by then the kernel is still finishing the grace period the doorbell's
registration started (``kvm_destroy_vm()`` waits for it in ``srcu_barrier()``), so that import costs
the whole command nothing.
"""

from __future__ import annotations

import enum

from minivmm.vmm.vcpu_loop import VcpuState


class RunOutcome(str, enum.Enum):
    """How a run ended (the CLI maps each outcome to a process exit code)."""

    HALTED = "halted"            # every vCPU executed HLT
    FAILED = "failed"            # a vCPU shut down, failed entry, hit an internal error, or errored
    TIMEOUT = "timeout"          # --timeout passed before every vCPU halted
    INTERRUPTED = "interrupted"  # Ctrl-C
    TERMINATED = "terminated"    # SIGTERM
    VIOLATION = "violation"      # the shadow found an exit or a completion the kernel must not have made
    GUEST_ERROR = "guest_error"  # the guest broke the VMM's protocol (e.g. its reported counts do not add up)


def final_outcome(ended: RunOutcome, states: list[VcpuState], kernel_violation: bool,
                  guest_error: bool = False) -> RunOutcome:
    """How the run ended, all told: ``ended`` is why the supervisor stopped waiting, ``states`` where each
    vCPU's loop ended, ``kernel_violation`` whether the shadow or --ftrace caught the kernel breaking a
    rule (which outranks a guest's own failure or timeout, not a user's Ctrl-C or SIGTERM), and
    ``guest_error`` whether the guest's own reports did not add up (it turns a clean halt into a guest
    error, never into a kernel violation)."""
    outcome = ended
    if outcome is RunOutcome.HALTED and any(s is not VcpuState.HALTED for s in states):
        outcome = RunOutcome.FAILED
    if kernel_violation and outcome in (RunOutcome.HALTED, RunOutcome.FAILED, RunOutcome.TIMEOUT):
        outcome = RunOutcome.VIOLATION
    elif guest_error and outcome is RunOutcome.HALTED:
        outcome = RunOutcome.GUEST_ERROR
    return outcome
