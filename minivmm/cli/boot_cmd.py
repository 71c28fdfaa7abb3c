"""``minivmm boot IMAGE``: boot a flat guest image on KVM and report how the run went."""

from __future__ import annotations

import io
import json
import sys
import threading
from typing import TextIO

import typer

from minivmm.cli.errors import CliError, ExitCode, outcome_exit_code
from minivmm.cli.options import parse_address, parse_size
from minivmm.devices.console import Console, ConsoleWriter
from minivmm.kvm.errors import KvmError, KvmUnavailable
from minivmm.kvm.exits import VcpuExit, describe_exit
from minivmm.kvm.paths import DEFAULT_DEVICE_PATH
from minivmm.kvm.vcpu import Vcpu
from minivmm.shadow.checker import Injection
from minivmm.vmm.boot import Mode
from minivmm.vmm.disasm import instruction_at
from minivmm.vmm.image import ImageError, read_image
from minivmm.vmm.layout import DEFAULT_LOAD_ADDR
from minivmm.vmm.lifecycle import StopRequest, install_stop_handlers
from minivmm.vmm.machine import Machine, MachineConfig
from minivmm.vmm.vcpu_loop import ExitHook
from minivmm.vmm.report import render


#: Seconds the summary waits for a stalled stdout reader at the end of a run.
SUMMARY_DRAIN_TIMEOUT = 2.0


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
    kvm_path: str = typer.Option(DEFAULT_DEVICE_PATH, "--kvm", help="The KVM device to open."),
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
    or timed out; 2 bad usage or bad input (image, options); 3 the kernel broke a rule (the shadow
    or --ftrace found a violation); 4 /dev/kvm missing or not accessible; 5 the guest broke the VMM's
    protocol; 130 Ctrl-C; 143 SIGTERM.
    """
    # From here on SIGINT and SIGTERM only set a flag, for the rest of the command (the handlers are not
    # restored: a second signal, however late, means "already stopping", never a traceback or a death).
    stop = StopRequest()
    install_stop_handlers(stop)
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
    sys.stdout.flush()
    out = ConsoleWriter(sys.stdout.fileno())  # guest output, then the summary: never blocks a vCPU
    console = Console(None if as_json else out)
    try:
        machine = Machine(config, data, console, stop=stop)
    except ImageError as e:
        raise CliError(str(e)) from None
    except KvmUnavailable as e:
        raise CliError(e.strerror, ExitCode.KVM_UNAVAILABLE) from None
    except KvmError as e:
        raise CliError(f"setting up the VM failed: {e.strerror}", ExitCode.GUEST_FAILED) from None
    with machine:
        hook = make_tracer(machine, sys.stderr) if trace else None
        report = machine.run(on_exit=hook)
    code = outcome_exit_code(report.outcome)
    text = io.StringIO()
    if as_json:
        doc = report.to_json()
        doc["exit_code"] = int(code)
        json.dump(doc, text, indent=2)
        text.write("\n")
    else:
        render(report, text, int(code))
    out.write(text.getvalue().encode(), keep=True)
    # A reader that has not taken the summary within this time is left behind (EPIPE: it left already).
    out.close(SUMMARY_DRAIN_TIMEOUT)
    return int(code)


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
