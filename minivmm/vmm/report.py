"""The result of a run: plain data the CLI prints for people (``render``) or as JSON (``to_json``)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from minivmm.kvm.errors import KvmError
from minivmm.kvm.exits import VcpuExit, describe_exit, exit_kind
from minivmm.vmm.disasm import exiting_instruction
from minivmm.vmm.vcpu_loop import VcpuRecord, VcpuState

if TYPE_CHECKING:
    from minivmm.vmm.machine import Machine


class RunOutcome(str, enum.Enum):
    """How a run ended, and the process exit code each outcome maps to."""

    HALTED = "halted"            # every vCPU executed HLT
    FAILED = "failed"            # a vCPU shut down, failed entry, hit an internal error, or errored
    TIMEOUT = "timeout"          # --timeout passed before every vCPU halted
    INTERRUPTED = "interrupted"  # Ctrl-C
    TERMINATED = "terminated"    # SIGTERM
    VIOLATION = "violation"      # the shadow found an exit or a completion the kernel must not have made

    @property
    def exit_code(self) -> int:
        """0 halted; 1 guest failure or timeout; 3 shadow violation; 130 Ctrl-C; 143 SIGTERM."""
        return {"halted": 0, "failed": 1, "timeout": 1, "violation": 3, "interrupted": 130,
                "terminated": 143}[self.value]


@dataclass
class VcpuReport:
    """One vCPU at the end of the run: its state, exits, and (unless it halted cleanly) where it was."""

    index: int
    state: str
    exits: dict[str, int]
    unclaimed: int
    last_exit: str | None = None
    error: str | None = None
    rip: int | None = None
    instruction: str | None = None
    registers: dict[str, int] = field(default_factory=dict)
    first_unclaimed: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunReport:
    """The whole run."""

    outcome: RunOutcome
    console: str
    console_dropped: int
    exits: dict[str, int]
    vcpus: list[VcpuReport]
    setup_ms: float
    first_exit_ms: float | None
    run_ms: float
    doorbell_kernel_writes: int
    doorbell_userspace_writes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """The process exit code for this outcome."""
        return self.outcome.exit_code

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``minivmm boot --json``)."""
        d = asdict(self)
        d["outcome"] = self.outcome.value
        d["halted"] = self.outcome is RunOutcome.HALTED
        d["exit_code"] = self.exit_code
        return d


_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
         "r14", "r15", "rip", "rflags")


def _where(machine: Machine, index: int, report: VcpuReport, last_exit: VcpuExit | None) -> None:
    """Fill in the registers and the instruction of a vCPU that did not halt cleanly: the one that caused
    its last exit (RIP may already be past it), else the one at RIP."""
    vcpu = machine.vcpus[index]
    try:
        regs = vcpu.get_regs()
        sregs = vcpu.get_sregs()
    except KvmError as e:
        report.error = report.error or f"registers unavailable: {e}"
        return
    report.registers = {name: int(getattr(regs, name)) for name in _REGS}
    report.registers.update(cr0=int(sregs.cr0), cr3=int(sregs.cr3), cr4=int(sregs.cr4),
                            efer=int(sregs.efer), cs_base=int(sregs.cs.base), cs=int(sregs.cs.selector))
    report.rip = int(regs.rip)
    linear, report.instruction = exiting_instruction(machine.memory, regs, sregs, last_exit)
    report.rip = linear - int(sregs.cs.base)  # the instruction's own RIP, as a disassembler shows it


def build_report(machine: Machine, records: list[VcpuRecord], outcome: RunOutcome, *,
                 t_start: int, t_ready: int, t_run: int, t_end: int) -> RunReport:
    """Gather the per-vCPU records and the devices' counters into a RunReport."""
    totals: dict[str, int] = {}
    vcpus = []
    for rec in records:
        exits = {exit_kind(cls): n for cls, n in rec.exits.items()}
        for k, n in exits.items():
            totals[k] = totals.get(k, 0) + n
        rep = VcpuReport(rec.index, rec.state.value, exits, rec.stats.unclaimed,
                         describe_exit(rec.last_exit) if rec.last_exit is not None else None, rec.error,
                         first_unclaimed=[asdict(u) for u in rec.stats.first_unclaimed])
        if rec.state is not VcpuState.HALTED:
            _where(machine, rec.index, rep, rec.last_exit)
        vcpus.append(rep)
    firsts = [r.first_exit_ns - r.entered_ns for r in records
              if r.first_exit_ns is not None and r.entered_ns is not None]
    doorbell = machine.doorbell
    return RunReport(
        outcome=outcome,
        console=machine.console.text(),
        console_dropped=machine.console.dropped,
        exits=totals,
        vcpus=vcpus,
        setup_ms=(t_ready - t_start) / 1e6,
        first_exit_ms=min(firsts) / 1e6 if firsts else None,
        run_ms=(t_end - t_run) / 1e6,
        doorbell_kernel_writes=doorbell.kernel_count() if doorbell else 0,
        doorbell_userspace_writes=doorbell.userspace_writes if doorbell else 0,
        extra=_extra(machine),
    )


def _extra(machine: Machine) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dyn = machine.dynamic
    if dyn is not None and (dyn.registrations or any(dyn.reported)):
        out["dynamic_doorbells"] = {"registrations": dyn.registrations, "unregistrations": dyn.unregistrations,
                                    "guest_reported_writes": sum(dyn.reported),
                                    "kernel_counted": sum(c.total() for c in dyn.counters),
                                    "userspace_writes": sum(dyn.userspace_writes)}
    out["shadow"] = machine.shadow.summary() if machine.shadow is not None else {"enabled": False}
    return out

