"""``minivmm boot IMAGE``: boot a flat guest image on KVM and report how the run went."""

from __future__ import annotations

import argparse
import sys

from minivmm.kvm.paths import DEFAULT_DEVICE_PATH
from minivmm.cli.errors import CliError, ExitCode, exit_code_table, kvm_unavailable, outcome_exit_code
from minivmm.cli.options import choice, float_range, int_range, parse_address, parse_size
from minivmm.vmm.layout import DEFAULT_LOAD_ADDR, DEFAULT_MEM_SIZE

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time); mypy knows the name
if TYPE_CHECKING:  # the VMM is imported when a run starts, not when the command line is parsed
    from minivmm.devices.console import ConsoleWriter
    from typing import TextIO

    from minivmm.kvm.exits import VcpuExit
    from minivmm.kvm.vcpu import Vcpu
    from minivmm.vmm.machine import Machine
    from minivmm.vmm.vcpu_loop import ExitHook


def make_tracer(machine: Machine, out: TextIO) -> ExitHook:
    """An exit hook printing one line per exit: vCPU, exit number, the address and text of the instruction
    that caused the exit (not the one RIP has moved on to), the exit."""
    import threading

    from minivmm.kvm.exits import describe_exit
    from minivmm.vmm.disasm import exiting_instruction

    lock = threading.Lock()
    counters: dict[int, int] = {}

    def on_exit(vcpu: Vcpu, exit_: VcpuExit) -> None:
        n = counters.get(vcpu.id, 0) + 1
        counters[vcpu.id] = n
        linear, insn = exiting_instruction(machine.memory, vcpu.get_regs(), vcpu.get_sregs(), exit_)
        with lock:
            out.write(f"vcpu{vcpu.id} #{n:<6} rip={linear:#08x}  {insn:<28}  {describe_exit(exit_)}\n")
            out.flush()

    return on_exit


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``boot`` command."""
    p = subparsers.add_parser(
        "boot", help="boot a flat guest image on KVM and report how the run went",
        description="Boot IMAGE on KVM: print the guest's console output as it comes, then a summary of "
                    "the run. With the shadow on (the default) every ioctl and exit is mirrored in the "
                    "kernel model and any exit or in-kernel completion the kernel must not have made is "
                    "reported.",
        epilog=f"Exit codes:\n{exit_code_table()}", example="minivmm boot guest/hello.bin")
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
    p.add_argument("--kvm", dest="kvm_path", default=DEFAULT_DEVICE_PATH, metavar="PATH",
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


#: The values of ``minivmm.vmm.boot.Mode`` and ``minivmm.shadow.checker.Injection``, spelled here so that
#: the parser is built without importing those modules (tests/test_cli.py checks they agree).
MODES = ("real", "protected", "long")
INJECTIONS = ("drop-registration", "delay-registration", "stale-bus")


#: Seconds the summary waits for a stalled stdout reader at the end of a run.
SUMMARY_DRAIN_TIMEOUT = 2.0


def run(args: argparse.Namespace) -> int:
    """Boot the image as ``args`` say; the exit code is the run's outcome's."""
    import io

    from minivmm.vmm.lifecycle import StopRequest, install_stop_handlers

    # From here on SIGINT and SIGTERM only set a flag, for the rest of the command (a watcher thread takes
    # them and is never removed: a second signal, however late, means "already stopping", never a
    # traceback or a death).
    stop = StopRequest()
    install_stop_handlers(stop)
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
    out = _stdout_writer()  # guest output, then the summary: never blocks a vCPU
    console = Console(None if args.as_json or out is None else out)
    try:
        machine = Machine(config, data, console, stop=stop)
    except ImageError as e:
        raise CliError(str(e)) from None
    except KvmUnavailable as e:
        raise kvm_unavailable(e) from None
    except KvmError as e:
        raise CliError(f"setting up the VM failed: {e.strerror}", code=ExitCode.GUEST_FAILED) from None
    with machine:
        hook = make_tracer(machine, sys.stderr) if args.trace else None
        report = machine.run(on_exit=hook)
        # The summary is written before the VM is closed: closing it waits in the kernel (kvm_destroy_vm's
        # srcu_barrier) for the grace period the doorbell's registration started, and that wait is the
        # same however much of it this work fills.
        code = outcome_exit_code(report.outcome)
        text = io.StringIO()
        if args.as_json:
            import json

            from minivmm.schemas import stamp
            doc = stamp("boot", report.to_json())
            doc["exit_code"] = int(code)
            json.dump(doc, text, indent=2)
            text.write("\n")
        else:
            from minivmm.vmm.report import render
            render(report, text, int(code))
        if out is not None:
            out.write(text.getvalue().encode(), keep=True)
            # A reader that has not taken the summary within this time is left behind (EPIPE: it left).
            out.close(SUMMARY_DRAIN_TIMEOUT)
    if out is not None and out.error is not None:  # the output is lost: that failure is the answer
        from minivmm.files import WriteFailed
        raise CliError(f"{WriteFailed('standard output', '-', out.error)}; the run itself ended with exit code "
                       f"{int(code)}", ExitCode.WRITE_FAILED)
    return int(code)


def _stdout_writer() -> ConsoleWriter | None:
    """A ConsoleWriter on stdout's descriptor, or None when there is no stdout (``>&-``)."""
    from minivmm.devices.console import ConsoleWriter
    if sys.stdout is None:
        return None
    try:
        sys.stdout.flush()
        return ConsoleWriter(sys.stdout.fileno())
    except (OSError, ValueError):
        return None


def _model_host() -> tuple[str, int]:
    """The shadow model's platform and HZ: the host's where they can be read, else PVM at HZ=250."""
    from minivmm.host import BACKENDS, config_values, detect_backend
    backend = detect_backend()
    hz = config_values(("CONFIG_HZ",)).get("CONFIG_HZ")
    return (BACKENDS[backend] if backend else "pvm"), (int(hz) if hz and hz.isdigit() else 250)


__all__: list[str] = ["register", "run"]
