"""The result of a run as plain data, and the pure functions that build and render it.

:class:`~minivmm.vmm.machine.Machine` takes a :class:`MachineSnapshot` when the run is over (the
devices' counters, the shadow's summary, and for each vCPU that did not halt cleanly its registers and
the code bytes at RIP); :func:`build_report` turns that and the vCPU loops' records into a
:class:`RunReport`, and :func:`render` prints it for people. None of the three touches KVM, so tests
drive them with hand-built snapshots. JSON is made only at the edge, by :meth:`RunReport.to_json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from minivmm.devices.control import DynamicDoorbellCounts
from minivmm.kvm.exits import VcpuExit, exit_kind
from minivmm.vmm.boot import Mode
from minivmm.vmm.outcome import RunOutcome
from minivmm.vmm.vcpu_loop import VcpuRecord, VcpuState

if TYPE_CHECKING:
    from minivmm.shadow.ftrace import FtraceResult
    from minivmm.shadow.summary import ShadowSummary


#: The registers a report shows, in this order.
REGISTER_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12",
                  "r13", "r14", "r15", "rip", "rflags")


@dataclass(frozen=True)
class VcpuSnapshot:
    """Where a vCPU was when the run ended: its registers and the code at its RIP (plain values).

    ``code`` holds up to 15 bytes at ``linear`` (CS base + RIP), or None when RIP is outside guest RAM;
    ``code_before`` the up to 15 bytes before it (KVM moves RIP past an OUT, an MMIO write and a HLT
    before it exits: the report decodes backwards to show the instruction that exited);
    ``error`` says why there are no registers (KVM_GET_REGS failed).
    """

    registers: dict[str, int] = field(default_factory=dict)
    linear: int = 0
    mode: Mode = Mode.REAL
    code: bytes | None = None
    error: str | None = None
    code_before: bytes = b""


@dataclass(frozen=True)
class RunTimes:
    """CLOCK_MONOTONIC (ns) at the start of set-up, when the vCPUs were ready, when they started, at the end."""

    start: int
    ready: int
    run: int
    end: int


@dataclass(frozen=True)
class MachineSnapshot:
    """Everything of the machine the report shows, taken after every vCPU thread ended."""

    console: str
    console_dropped: int
    doorbell_kernel_writes: int
    doorbell_userspace_writes: int
    #: None when the guest never used the control device.
    dynamic_doorbells: DynamicDoorbellCounts | None
    #: The shadow's summary (None with ``--no-check``).
    shadow: ShadowSummary | None
    #: By vCPU index: only the vCPUs that did not halt cleanly.
    vcpus: dict[int, VcpuSnapshot] = field(default_factory=dict)
    #: --ftrace: the cross-check's result, or why there is none (both None without --ftrace).
    ftrace: FtraceResult | None = None
    ftrace_unavailable: str | None = None
    #: Console bytes not echoed because the reader of the output stalled.
    console_echo_dropped: int = 0


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
    dynamic_doorbells: DynamicDoorbellCounts | None = None
    #: The shadow's summary (None with ``--no-check``).
    shadow: ShadowSummary | None = None
    ftrace: FtraceResult | None = None
    #: Why --ftrace could not record (None when it did, or was not asked for).
    ftrace_unavailable: str | None = None
    #: Whether --ftrace was asked for.
    ftrace_requested: bool = False
    #: Console bytes not echoed because the reader of the output stalled (captured all the same).
    console_echo_dropped: int = 0

    @property
    def extra(self) -> dict[str, Any]:
        """The optional sections in their JSON form: ``dynamic_doorbells``, ``shadow``, ``ftrace``."""
        out: dict[str, Any] = {}
        if self.dynamic_doorbells is not None:
            out["dynamic_doorbells"] = self.dynamic_doorbells._asdict()
        out["shadow"] = self.shadow.to_json() if self.shadow is not None else {"enabled": False}
        if self.ftrace_requested:
            out["ftrace"] = (self.ftrace.to_json() if self.ftrace is not None
                             else {"unavailable": self.ftrace_unavailable})
        if self.console_echo_dropped:
            out["console_echo_dropped"] = self.console_echo_dropped
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``minivmm boot --json``)."""
        d: dict[str, Any] = {
            "outcome": self.outcome.value, "console": self.console, "console_dropped": self.console_dropped,
            "exits": self.exits, "vcpus": [asdict(v) for v in self.vcpus], "setup_ms": self.setup_ms,
            "first_exit_ms": self.first_exit_ms, "run_ms": self.run_ms,
            "doorbell_kernel_writes": self.doorbell_kernel_writes,
            "doorbell_userspace_writes": self.doorbell_userspace_writes, "extra": self.extra,
        }
        d["halted"] = self.outcome is RunOutcome.HALTED
        return d


def _instruction(snap: VcpuSnapshot, last_exit: VcpuExit | None) -> tuple[int, str]:
    """The RIP and text of the instruction that caused the vCPU's last exit (KVM may have moved RIP
    past it: see disasm.exiting_instruction_in), else of the one at RIP."""
    rip = snap.registers["rip"]
    if snap.code is None:
        return rip, f"(rip {snap.linear:#x} is outside guest RAM)"
    from minivmm.vmm.disasm import exiting_instruction_in  # capstone costs ~45 ms to import: only when shown
    linear, text = exiting_instruction_in(snap.code_before, snap.code, snap.linear, snap.mode, last_exit)
    return rip - (snap.linear - linear), text


def build_report(records: list[VcpuRecord], outcome: RunOutcome, snapshot: MachineSnapshot,
                 times: RunTimes) -> RunReport:
    """Gather the per-vCPU records and the machine's snapshot into a RunReport (pure: no KVM)."""
    totals: dict[str, int] = {}
    vcpus = []
    for rec in records:
        exits = {exit_kind(cls): n for cls, n in rec.exits.items()}
        for k, n in exits.items():
            totals[k] = totals.get(k, 0) + n
        rep = VcpuReport(rec.index, rec.state.value, exits, rec.stats.unclaimed,
                         rec.last_exit.describe() if rec.last_exit is not None else None, rec.error,
                         first_unclaimed=[u._asdict() for u in rec.stats.first_unclaimed])
        where = snapshot.vcpus.get(rec.index)
        if rec.state is not VcpuState.HALTED and where is not None:
            if where.error is not None:
                rep.error = rep.error or f"registers unavailable: {where.error}"
            else:
                rep.registers = dict(where.registers)
                rep.rip, rep.instruction = _instruction(where, rec.last_exit)
        vcpus.append(rep)
    firsts = [r.first_exit_ns - r.entered_ns for r in records
              if r.first_exit_ns is not None and r.entered_ns is not None]
    return RunReport(
        outcome=outcome,
        console=snapshot.console,
        console_dropped=snapshot.console_dropped,
        exits=totals,
        vcpus=vcpus,
        setup_ms=(times.ready - times.start) / 1e6,
        first_exit_ms=min(firsts) / 1e6 if firsts else None,
        run_ms=(times.end - times.run) / 1e6,
        doorbell_kernel_writes=snapshot.doorbell_kernel_writes,
        doorbell_userspace_writes=snapshot.doorbell_userspace_writes,
        dynamic_doorbells=snapshot.dynamic_doorbells,
        shadow=snapshot.shadow,
        ftrace=snapshot.ftrace,
        ftrace_unavailable=snapshot.ftrace_unavailable,
        ftrace_requested=snapshot.ftrace is not None or snapshot.ftrace_unavailable is not None,
        console_echo_dropped=snapshot.console_echo_dropped,
    )


_HEADLINES = {
    "violation": "the shadow found a violation",
    "guest_error": "the guest broke the VMM's protocol",
    "halted": "every vCPU halted",
    "failed": "the guest failed",
    "timeout": "timed out before every vCPU halted",
    "interrupted": "interrupted (Ctrl-C)",
    "terminated": "terminated (SIGTERM)",
}


def render(report: RunReport, out: TextIO, exit_code: int) -> None:
    """Print the human summary of a run; ``exit_code`` is the process's (the CLI maps outcomes)."""
    w = out.write
    if report.console and not report.console.endswith("\n"):
        w("\n")
    w(f"--- minivmm: {_HEADLINES[report.outcome.value]} (exit code {exit_code}) ---\n")
    exits = " · ".join(f"{k} {v}" for k, v in sorted(report.exits.items(), key=lambda kv: -kv[1]))
    w(f"exits      {sum(report.exits.values())} ({exits or 'none'})\n")
    for v in report.vcpus:
        line = f"vcpu{v.index}      {v.state} after {sum(v.exits.values())} exits"
        if v.unclaimed:
            line += f", {v.unclaimed} unclaimed accesses"
        w(line + "\n")
        if v.state != "halted":
            if v.last_exit:
                w(f"           last exit: {v.last_exit}\n")
            if v.error:
                w(f"           error: {v.error}\n")
            if v.rip is not None:
                w(f"           at rip {v.rip:#x}: {v.instruction}\n")
            if v.registers:
                regs = v.registers
                names = [n for n in regs if n not in ("rip",)]
                for i in range(0, len(names), 4):
                    w("          " + "  ".join(f"{n:>7}={regs[n]:#018x}" for n in names[i:i + 4]) + "\n")
        for u in v.first_unclaimed[:3]:
            w(f"           unclaimed {u['space']} {'write' if u['is_write'] else 'read'} "
              f"at {u['addr']:#x} size {u['size']}\n")
    w(f"doorbell   {report.doorbell_kernel_writes} writes handled in the kernel, "
      f"{report.doorbell_userspace_writes} reached userspace\n")
    first = f"{report.first_exit_ms:.3f} ms" if report.first_exit_ms is not None else "-"
    w(f"timings    set-up {report.setup_ms:.2f} ms · first exit {first} after KVM_RUN · "
      f"run {report.run_ms:.2f} ms\n")
    if report.console_dropped:
        w(f"console    {report.console_dropped} bytes dropped past the capture limit\n")
    if report.console_echo_dropped:
        w(f"console    {report.console_echo_dropped} bytes not echoed: the reader of the output stalled\n")
    dyn = report.dynamic_doorbells
    if dyn is not None:
        w(f"control    {dyn.registrations} doorbell registrations, {dyn.unregistrations} deregistrations; "
          f"guest wrote {dyn.guest_reported_writes}: {dyn.kernel_counted} in the kernel, "
          f"{dyn.userspace_writes} in userspace\n")
    render_shadow(report.shadow, out)
    if report.ftrace_requested:
        render_ftrace(report.ftrace, report.ftrace_unavailable, out)


def render_ftrace(ft: FtraceResult | None, unavailable: str | None, out: TextIO) -> None:
    """The ftrace cross-check section."""
    w = out.write
    if ft is None:
        w(f"ftrace     not available: {unavailable}\n")
        return
    k = ft.kernel_userspace_exits
    w(f"ftrace     {ft.events} kvm events: the kernel recorded {k.get('KVM_EXIT_IO', 0)} IO and "
      f"{k.get('KVM_EXIT_MMIO', 0)} MMIO exits to userspace (the VMM saw {ft.vmm_exits['io']} and "
      f"{ft.vmm_exits['mmio']}); {sum(ft.in_kernel_writes.values())} in-kernel MMIO writes traced, "
      f"{sum(ft.doorbell_counts.values())} counted by the doorbells\n")
    if not ft.mismatches:
        w("           the kernel's record agrees\n")
    for m in ft.mismatches[:5]:
        w(f"           MISMATCH: {m}\n")


def render_shadow(sh: ShadowSummary | None, out: TextIO) -> None:
    """The shadow section: what was checked and every violation found (the first few in full)."""
    w = out.write
    if sh is None:
        w("shadow     off (--no-check)\n")
        return
    inject = f" [fault injected: {sh.inject}]" if sh.inject else ""
    if sh.inject and not sh.inject_exercised:
        inject = f" [fault {sh.inject} planted, never exercised]"
    w(f"shadow     {sh.exits_checked} exits checked against {sh.bus_versions} bus versions; "
      f"{sh.registrations_mirrored} registrations and {sh.deregistrations_mirrored} deregistrations "
      f"mirrored; {sh.in_kernel_completions_reconciled} in-kernel completions reconciled{inject}\n")
    if sh.guest_errors:
        w(f"           {sh.guest_errors} GUEST ERROR(S) (the guest's word, not the kernel's fault); "
          "the first:\n")
        for g in sh.first_guest_errors:
            w(f"           - {g.rule.value}: {g.message}\n")
    if sh.inject and not sh.inject_exercised:
        what = "deregistered no device" if sh.inject == "stale-bus" else "registered no device after it started"
        w(f"           the guest {what}, so the {sh.inject} fault never acted: this run did not test the "
          "checker\n")
    if not sh.violations:
        w("           no violation\n")
        return
    w(f"           {sh.violations} VIOLATION(S); the first:\n")
    for v in sh.first_violations:
        who = f"vcpu{v.vcpu} " if v.vcpu is not None else ""
        w(f"           - {v.rule.value}: {who}{v.message} (bus versions {v.versions[0]}..{v.versions[1]}; "
          f"exit {v.exit})\n")
