"""``minivmm boot IMAGE``: boot a flat guest image on KVM and report how the run went."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Annotated

import typer

from minivmm.cli.app import EPILOG_WIDTH, Command, run_command
from minivmm.cli.errors import CliError, ExitCode, exit_code_table, kvm_unavailable, outcome_exit_code
from minivmm.cli.options import DEFAULT_KVM, Json, Kvm, choice, float_range, int_range, parse_address, parse_size
from minivmm.vmm.layout import DEFAULT_LOAD_ADDR

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time); mypy knows the name
if TYPE_CHECKING:  # the VMM is imported when a run starts, not when the command line is parsed
    from typing import TextIO

    from minivmm.devices.console import ConsoleWriter
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


HELP = ("Boot IMAGE on KVM: print the guest's console output as it comes, then a summary of the run. With "
        "the shadow on (the default) every ioctl and exit is mirrored in the kernel model and any exit or "
        "in-kernel completion the kernel must not have made is reported.")
EXAMPLE = "minivmm boot guest/hello.bin"


def boot(
    image: Annotated[str, typer.Argument(metavar="IMAGE", show_default=False,
                                         help="flat binary guest image (e.g. guest/hello.bin)")],
    mode: Annotated[str, typer.Option(
        "--mode", metavar="MODE", parser=choice(MODES, "a CPU mode"),
        help="CPU mode the image is entered in: real (16-bit, CS base 0), protected (32-bit flat) or long "
             "(64-bit, identity map of 4 GiB in 2 MiB pages)")] = "real",
    mem: Annotated[int, typer.Option(
        "-m", "--mem", metavar="SIZE", parser=parse_size,
        help="guest RAM size, 1M to 3G: a bare number is MiB, as in QEMU (-m 128), or 128M, 1G")] = "16M",  # type: ignore[assignment]
    load_addr: Annotated[int, typer.Option(
        "--load-addr", metavar="ADDR", parser=parse_address,
        help="guest-physical address the image is loaded at and entered")] = f"{DEFAULT_LOAD_ADDR:#x}",  # type: ignore[assignment]
    vcpus: Annotated[int, typer.Option(
        "--vcpus", metavar="N", parser=int_range(1, 64),
        help="number of vCPUs (1 to 64), each on its own thread; each starts at the load address with its "
             "index in RSI")] = 1,
    timeout: Annotated[float, typer.Option(
        "--timeout", metavar="SECONDS", parser=float_range(0.001),
        help="seconds before a guest that has not halted is stopped, exit 1")] = 10.0,
    strict: Annotated[bool, typer.Option("--strict", help="make an access no device claims fatal")] = False,
    trace: Annotated[bool, typer.Option(
        "--trace", help="print every exit to stderr as it happens, with the instruction that caused it")] = False,
    as_json: Json = False,
    kvm_path: Kvm = DEFAULT_KVM,
    check: Annotated[bool, typer.Option(
        "--check/--no-check", help="shadow every ioctl and exit with the kernel model and flag any exit or "
                                   "in-kernel completion the kernel must not have made (--no-check: run "
                                   "without it)")] = True,
    inject: Annotated[str | None, typer.Option(
        "--inject", metavar="FAULT", parser=choice(INJECTIONS, "a fault the shadow knows"),
        help="plant a fault in the shadow to show the checker catches it: " + ", ".join(INJECTIONS))] = None,
    guest_iterations: Annotated[int, typer.Option(
        "--guest-iterations", metavar="N", parser=int_range(1, 10_000_000),
        help="what the control device tells guests to do, e.g. the registrations regloop makes")] = 20000,
    ftrace: Annotated[bool, typer.Option(
        "--ftrace", help="record the kvm tracepoints (kvm_mmio, kvm_pio, kvm_userspace_exit) for this run and "
                         "cross-check them with the VMM and the shadow (root; tracefs is mounted privately if "
                         "needed)")] = False,
) -> int:
    """Boot IMAGE on KVM (see HELP)."""
    return run_command(run, SimpleNamespace(**locals()))  # locals() here: exactly the parameters


#: The values of ``minivmm.vmm.boot.Mode`` and ``minivmm.shadow.checker.Injection``, spelled here so that
#: the parser is built without importing those modules (tests/test_cli.py checks they agree).
MODES = ("real", "protected", "long")
INJECTIONS = ("drop-registration", "delay-registration", "stale-bus")


#: The shadow's model where the host's CONFIG_HZ or KVM module cannot be read (the summary says so).
SHADOW_FALLBACK = (250, "pvm")

#: Seconds the summary waits for a stalled stdout reader at the end of a run.
SUMMARY_DRAIN_TIMEOUT = 2.0


def run(args: SimpleNamespace) -> int:
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
    from minivmm.host import fallback, modelled_kernel, this_host
    model = modelled_kernel(None, None, this_host(), fallback(*SHADOW_FALLBACK))
    assert model.hz is not None and model.platform is not None  # a fallback was given
    platform, hz = model.platform, model.hz
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
            doc["model"] = model._asdict()
            json.dump(doc, text, indent=2)
            text.write("\n")
        else:
            from minivmm.vmm.report import render
            render(report, text, int(code))
            if model.fallback:  # the shadow's model runs at a kernel this host may not be: say so
                text.write(f"model      HZ={hz} ({model.hz_source}), platform {platform} "
                           f"({model.platform_source})\n")
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


COMMAND = Command("boot", boot, HELP,
                  "boot a flat guest image on KVM and report how the run went",
                  epilog=f"\b\nExit codes:\n{exit_code_table(EPILOG_WIDTH)}")


__all__: list[str] = ["COMMAND", "run"]
