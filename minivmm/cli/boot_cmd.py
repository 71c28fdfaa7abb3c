"""``minivmm boot IMAGE``: boot a flat guest image on KVM and report how the run went."""

from __future__ import annotations

import json
import sys
import threading
from typing import TextIO

import typer

from minivmm.cli.errors import CliError
from minivmm.cli.options import parse_address, parse_size
from minivmm.devices.console import Console
from minivmm.kvm.errors import KvmError, KvmUnavailable
from minivmm.kvm.exits import VcpuExit, describe_exit
from minivmm.kvm.vcpu import Vcpu
from minivmm.shadow.checker import Injection
from minivmm.vmm.boot import Mode
from minivmm.vmm.disasm import instruction_at
from minivmm.vmm.image import ImageError, read_image
from minivmm.vmm.layout import DEFAULT_LOAD_ADDR
from minivmm.vmm.machine import Machine, MachineConfig
from minivmm.vmm.vcpu_loop import ExitHook
from minivmm.vmm.report import RunReport


def make_tracer(machine: Machine, out: TextIO) -> ExitHook:
    """An exit hook printing one line per exit: vCPU, exit number, RIP, the instruction there, the exit."""
    lock = threading.Lock()
    counters: dict[int, int] = {}

    def on_exit(vcpu: Vcpu, exit_: VcpuExit) -> None:
        n = counters.get(vcpu.id, 0) + 1
        counters[vcpu.id] = n
        linear, insn = instruction_at(machine.memory, vcpu.get_regs(), vcpu.get_sregs())
        with lock:
            out.write(f"vcpu{vcpu.id} #{n:<6} rip={linear:#08x}  {insn:<28} {describe_exit(exit_)}\n")
            out.flush()

    return on_exit


def render(report: RunReport, out) -> None:
    """Print the human summary of a run."""
    w = out.write
    headline = {
        "violation": "the shadow found a violation",
        "halted": "every vCPU halted",
        "failed": "the guest failed",
        "timeout": "timed out before every vCPU halted",
        "interrupted": "interrupted (Ctrl-C)",
        "terminated": "terminated (SIGTERM)",
    }[report.outcome.value]
    if report.console and not report.console.endswith("\n"):
        w("\n")
    w(f"--- minivmm: {headline} (exit code {report.exit_code}) ---\n")
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
    dyn = report.extra.get("dynamic_doorbells")
    if dyn:
        w(f"control    {dyn['registrations']} doorbell registrations, {dyn['unregistrations']} deregistrations; "
          f"guest wrote {dyn['guest_reported_writes']}: {dyn['kernel_counted']} in the kernel, "
          f"{dyn['userspace_writes']} in userspace\n")
    render_shadow(report.extra.get("shadow", {}), out)
    if "ftrace" in report.extra:
        render_ftrace(report.extra["ftrace"], out)


def render_ftrace(ft: dict, out) -> None:
    """The ftrace cross-check section."""
    w = out.write
    if "unavailable" in ft:
        w(f"ftrace     not available: {ft['unavailable']}\n")
        return
    k = ft["kernel_userspace_exits"]
    w(f"ftrace     {ft['events']} kvm events: the kernel recorded {k.get('KVM_EXIT_IO', 0)} IO and "
      f"{k.get('KVM_EXIT_MMIO', 0)} MMIO exits to userspace (the VMM saw {ft['vmm_exits']['io']} and "
      f"{ft['vmm_exits']['mmio']}); {sum(ft['in_kernel_writes'].values())} in-kernel MMIO writes traced, "
      f"{sum(ft['doorbell_counts'].values())} counted by the doorbells\n")
    if not ft["mismatches"]:
        w("           the kernel's record agrees\n")
    for m in ft["mismatches"][:5]:
        w(f"           MISMATCH: {m}\n")


def render_shadow(sh: dict, out) -> None:
    """The shadow section: what was checked and every violation found (the first few in full)."""
    w = out.write
    if not sh.get("enabled"):
        w("shadow     off (--no-check)\n")
        return
    inject = f" [fault injected: {sh['inject']}]" if sh.get("inject") else ""
    w(f"shadow     {sh['exits_checked']} exits checked against {sh['bus_versions']} bus versions; "
      f"{sh['registrations_mirrored']} registrations and {sh['deregistrations_mirrored']} deregistrations "
      f"mirrored; {sh['in_kernel_completions_reconciled']} in-kernel completions reconciled{inject}\n")
    if not sh["violations"]:
        w("           no violation\n")
        return
    w(f"           {sh['violations']} VIOLATION(S); the first:\n")
    for v in sh["first_violations"]:
        who = f"vcpu{v['vcpu']} " if v["vcpu"] is not None else ""
        w(f"           - {v['rule']}: {who}{v['message']} (bus versions {v['versions'][0]}..{v['versions'][1]}; "
          f"exit {v['exit']})\n")


def boot(
    image: str = typer.Argument(..., help="Flat binary guest image (e.g. guest/hello.bin).", show_default=False),
    mode: Mode = typer.Option(Mode.REAL, "--mode", "-m", case_sensitive=False,
                              help="CPU mode the image is entered in: real (16-bit, CS base 0), protected "
                                   "(32-bit flat) or long (64-bit, identity map of 4 GiB in 2 MiB pages)."),
    mem: str = typer.Option("16M", "--mem", help="Guest RAM size: 16M, 1G, 0x1000000 ... (1M to 3G)."),
    load_addr: str = typer.Option(hex(DEFAULT_LOAD_ADDR), "--load-addr",
                                  help="Guest-physical address the image is loaded at and entered."),
    vcpus: int = typer.Option(1, "--vcpus", min=1, max=64,
                              help="Number of vCPUs, each on its own thread; each starts at the load "
                                   "address with its index in RSI."),
    timeout: float = typer.Option(10.0, "--timeout", min=0.001,
                                  help="Seconds before a guest that has not halted is stopped (exit 1)."),
    strict: bool = typer.Option(False, "--strict", help="Make an access no device claims fatal."),
    trace: bool = typer.Option(False, "--trace", help="Print every exit to stderr as it happens, with "
                                                      "the instruction at RIP."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object instead; "
                                                       "the console output is inside it."),
    kvm_path: str = typer.Option("/dev/kvm", "--kvm", help="The KVM device to open."),
    check: bool = typer.Option(True, "--check/--no-check",
                               help="Shadow every ioctl and exit with the kernel model and flag any exit "
                                    "or in-kernel completion the kernel must not have made."),
    inject: Injection | None = typer.Option(None, "--inject", case_sensitive=False,
                                               help="Plant a fault in the shadow to show the checker "
                                                    "catches it: drop-registration, delay-registration, "
                                                    "stale-bus."),
    guest_iterations: int = typer.Option(20000, "--guest-iterations", min=1, max=10_000_000,
                                         help="What the control device tells guests to do, e.g. the "
                                              "registrations regloop makes."),
    ftrace: bool = typer.Option(False, "--ftrace",
                                help="Record the kvm tracepoints (kvm_mmio, kvm_pio, kvm_userspace_exit) for "
                                     "this run and cross-check them with the VMM and the shadow (root; "
                                     "tracefs is mounted privately if needed)."),
) -> int:
    """Boot IMAGE on KVM: print the guest's console output as it comes, then a summary of the run.

    Exit codes: 0 every vCPU halted; 1 the guest failed (triple fault, entry failure, internal error)
    or timed out; 2 bad usage or bad input (image, options, /dev/kvm); 3 the shadow found a
    violation; 130 Ctrl-C; 143 SIGTERM.
    """
    mem_size = parse_size(mem)
    addr = parse_address(load_addr)
    try:
        data = read_image(image)
    except ImageError as e:
        raise CliError(str(e)) from None
    if inject is not None and not check:
        raise CliError("--inject plants a fault in the shadow: it needs the check on (drop --no-check)")
    platform, hz = _model_host()
    config = MachineConfig(mem_size=mem_size, vcpus=vcpus, mode=mode, load_addr=addr, strict=strict,
                           timeout=timeout, kvm_path=kvm_path, check=check,
                           inject=inject.value if inject else None, guest_iterations=guest_iterations,
                           model_platform=platform, model_hz=hz, ftrace=ftrace)
    console = Console(None if as_json else sys.stdout.buffer)
    try:
        machine = Machine(config, data, console)
    except ImageError as e:
        raise CliError(str(e)) from None
    except KvmUnavailable as e:
        raise CliError(e.strerror) from None
    except KvmError as e:
        raise CliError(f"setting up the VM failed: {e.strerror}", code=1) from None
    with machine:
        hook = make_tracer(machine, sys.stderr) if trace else None
        report = machine.run(on_exit=hook)
    sys.stdout.flush()
    if as_json:
        from minivmm.schemas import stamp
        json.dump(stamp("boot", report.to_json()), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(report, sys.stdout)
    return report.exit_code


def _model_host() -> tuple[str, int]:
    """The shadow model's platform and HZ: the host's where they can be read, else PVM at HZ=250."""
    from minivmm.host import BACKENDS, config_value, detect_backend, kernel_config
    backend = detect_backend()
    config, _ = kernel_config()
    hz = config_value(config, "CONFIG_HZ") if config else None
    return (BACKENDS[backend] if backend else "pvm"), (int(hz) if hz and hz.isdigit() else 250)


def register(app: typer.Typer) -> None:
    """Add the ``boot`` command to ``app``."""
    app.command(no_args_is_help=True)(boot)


__all__: list[str] = ["boot", "register", "render"]
