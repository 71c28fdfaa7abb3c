"""``minivmm boot IMAGE``: boot a flat guest image on KVM and report how the run went."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import TYPE_CHECKING, Any, TextIO

from minivmm.cli.errors import CliError, ExitCode, kvm_unavailable
from minivmm.cli.options import choice, float_range, int_range, parse_address, parse_size
from minivmm.vmm.layout import DEFAULT_LOAD_ADDR, DEFAULT_MEM_SIZE

if TYPE_CHECKING:  # the VMM is imported when a run starts, not when the command line is parsed
    from minivmm.kvm.exits import VcpuExit
    from minivmm.kvm.vcpu import Vcpu
    from minivmm.vmm.machine import Machine
    from minivmm.vmm.report import RunReport
    from minivmm.vmm.vcpu_loop import ExitHook


def make_tracer(machine: Machine, out: TextIO) -> ExitHook:
    """An exit hook printing one line per exit: vCPU, exit number, RIP, the instruction there, the exit."""
    from minivmm.kvm.exits import describe_exit
    from minivmm.vmm.disasm import instruction_at

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


def render(report: RunReport, out: TextIO) -> None:
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


def render_ftrace(ft: dict[str, Any], out: TextIO) -> None:
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


def render_shadow(sh: dict[str, Any], out: TextIO) -> None:
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


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``boot`` command."""
    p = subparsers.add_parser(
        "boot", help="boot a flat guest image on KVM and report how the run went",
        description="Boot IMAGE on KVM: print the guest's console output as it comes, then a summary of "
                    "the run. With the shadow on (the default) every ioctl and exit is mirrored in the "
                    "kernel model and any exit or in-kernel completion the kernel must not have made is "
                    "reported.",
        epilog=EPILOG, example="minivmm boot guest/hello.bin")
    p.add_argument("image", metavar="IMAGE", help="flat binary guest image (e.g. guest/hello.bin)")
    p.add_argument("--mode", type=choice(MODES, "a CPU mode"), default="real", metavar="MODE",
                   help="CPU mode the image is entered in: real (16-bit, CS base 0), protected (32-bit "
                        "flat) or long (64-bit, identity map of 4 GiB in 2 MiB pages) (default: real)")
    p.add_argument("-m", "--mem", type=parse_size, default=DEFAULT_MEM_SIZE, metavar="SIZE",
                   help="guest RAM size: 16M, 1G, 0x1000000 ... (1M to 3G; default: 16M)")
    p.add_argument("--load-addr", type=parse_address, default=DEFAULT_LOAD_ADDR, metavar="ADDR",
                   help=f"guest-physical address the image is loaded at and entered "
                        f"(default: {DEFAULT_LOAD_ADDR:#x})")
    p.add_argument("--vcpus", type=int_range(1, 64), default=1, metavar="N",
                   help="number of vCPUs (1 to 64), each on its own thread; each starts at the load "
                        "address with its index in RSI (default: 1)")
    p.add_argument("--timeout", type=float_range(0.001), default=10.0, metavar="SECONDS",
                   help="seconds before a guest that has not halted is stopped, exit 1 (default: 10)")
    p.add_argument("--strict", action="store_true", help="make an access no device claims fatal")
    p.add_argument("--trace", action="store_true",
                   help="print every exit to stderr as it happens, with the instruction that caused it")
    p.add_argument("--json", dest="as_json", action="store_true",
                   help="print the summary as one JSON object instead; the console output is inside it")
    p.add_argument("--kvm", dest="kvm_path", default="/dev/kvm", metavar="PATH",
                   help="the KVM device to open (default: /dev/kvm)")
    p.add_argument("--check", dest="check", action="store_true", default=True,
                   help="shadow every ioctl and exit with the kernel model and flag any exit or in-kernel "
                        "completion the kernel must not have made (the default)")
    p.add_argument("--no-check", dest="check", action="store_false", help="run without the shadow")
    p.add_argument("--inject", type=choice(INJECTIONS, "a fault the shadow knows"), default=None,
                   metavar="FAULT",
                   help="plant a fault in the shadow to show the checker catches it: "
                        + ", ".join(INJECTIONS))
    p.add_argument("--guest-iterations", type=int_range(1, 10_000_000), default=20000, metavar="N",
                   help="what the control device tells guests to do, e.g. the registrations regloop "
                        "makes (default: 20000)")
    p.add_argument("--ftrace", action="store_true",
                   help="record the kvm tracepoints (kvm_mmio, kvm_pio, kvm_userspace_exit) for this run "
                        "and cross-check them with the VMM and the shadow (root; tracefs is mounted "
                        "privately if needed)")
    p.set_defaults(handler=run)


EPILOG = """\
Exit codes:
  0    every vCPU halted
  1    the guest failed (triple fault, entry failure, internal error) or
       timed out
  2    bad usage or bad input (image, options, a --kvm path that is not KVM)
  3    the shadow (or --ftrace) found an exit the kernel must not have made
  4    cannot run here: /dev/kvm missing or not accessible
  130  Ctrl-C; 143 SIGTERM"""

#: The values of ``minivmm.vmm.boot.Mode`` and ``minivmm.shadow.checker.Injection``, spelled here so that
#: the parser is built without importing those modules (tests/test_cli.py checks they agree).
MODES = ("real", "protected", "long")
INJECTIONS = ("drop-registration", "delay-registration", "stale-bus")


def run(args: argparse.Namespace) -> int:
    """Boot the image as ``args`` say; the exit code is the run's outcome's."""
    from minivmm.devices.console import Console
    from minivmm.kvm.errors import KvmError, KvmUnavailable
    from minivmm.vmm.boot import Mode
    from minivmm.vmm.image import ImageError, check_placement, read_image
    from minivmm.vmm.layout import system_area_base
    from minivmm.vmm.machine import Machine, MachineConfig

    mode = Mode(args.mode)
    try:
        # RAM size, load address and mode first: they bound the image, which is then refused by its
        # size before it is read (a 2 GiB sparse file costs a stat, not 2 GiB of reading).
        check_placement(0, args.load_addr, args.mem, mode)
        top = system_area_base(args.mem)
        data = read_image(args.image, top - args.load_addr,
                          f"RAM from {args.load_addr:#x} to the VMM's system area at {top:#x} "
                          f"({top - args.load_addr} bytes; use a larger --mem)")
    except ImageError as e:
        raise CliError(str(e)) from None
    if args.inject is not None and not args.check:
        raise CliError("--inject plants a fault in the shadow: it needs the check on (drop --no-check)")
    platform, hz = _model_host()
    config = MachineConfig(mem_size=args.mem, vcpus=args.vcpus, mode=mode, load_addr=args.load_addr,
                           strict=args.strict, timeout=args.timeout, kvm_path=args.kvm_path, check=args.check,
                           inject=args.inject, guest_iterations=args.guest_iterations,
                           model_platform=platform, model_hz=hz, ftrace=args.ftrace)
    console = Console(None if args.as_json else sys.stdout.buffer)
    try:
        machine = Machine(config, data, console)
    except ImageError as e:
        raise CliError(str(e)) from None
    except KvmUnavailable as e:
        raise kvm_unavailable(e) from None
    except KvmError as e:
        raise CliError(f"setting up the VM failed: {e.strerror}", code=ExitCode.GUEST_FAILED) from None
    with machine:
        hook = make_tracer(machine, sys.stderr) if args.trace else None
        report = machine.run(on_exit=hook)
    sys.stdout.flush()
    if args.as_json:
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


__all__: list[str] = ["register", "render", "run"]
