"""``minivmm repro``: write a set-up sequence as one C program (or KVM selftest) that times it as
``minivmm timing`` does, for someone who will never install minivmm."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Annotated

import typer

from minivmm.cli.app import Command, run_command
from minivmm.cli.errors import CliError
from minivmm.cli.options import HostHz, HostPlatform, Samples, int_range, output_option, sequence_option

HELP = ("Write a VM set-up sequence as one self-contained C file (libc and <linux/kvm.h> only; gcc -O2 -Wall, "
        "also -static) that runs it in a fresh VM per repetition, each at a random point in a jiffy, times each "
        "ioctl beside the system call, and prints one repetition strace -T style and min/p10/p50/p90/max per "
        "step (--json: the steps as `minivmm timing --json` has them). Its header says what it reproduces, "
        "where it was generated, and what each kernel variant predicts for the stalled steps at this host's HZ "
        "and platform.")
EPILOG = ("Exit codes as minivmm --help lists them; here 2 also means a sequence the kernel would refuse or "
          "with nothing to time.")


def repro(
    sequence: Annotated[str, sequence_option(
        "auto: the one `minivmm timing` runs by default on this platform")] = "auto",
    output: Annotated[str | None, output_option("the program", "FILE.c")] = None,
    repeat: Annotated[int, typer.Option("-r", "--repeat", metavar="N", parser=int_range(1, 100_000),
                                        help="the program's default number of repetitions")] = 100,
    kselftest: Annotated[bool, typer.Option(
        "--kselftest", help="write a KVM selftest instead (kvm_util/test_util, ksft_* results, KSFT_SKIP "
                            "without /dev/kvm)")] = False,
    hz: HostHz = None,
    platform: HostPlatform = None,
    samples: Samples = 2000,
) -> int:
    """Write the C reproducer (see HELP)."""
    args = SimpleNamespace(**locals())  # locals() here: exactly the parameters
    return run_command(run, args)


def run(args: SimpleNamespace) -> int:
    """Load and check the sequence and the output path, predict, write the C file."""
    import os

    from kernel_model.platforms import PLATFORMS, default_sequence
    from kernel_model.sequences import SequenceError
    from minivmm import __version__
    from minivmm.cli import seqinput
    from minivmm.files import Output
    from minivmm.host import modelled_kernel, read_host_info, this_host
    from minivmm.repro.generate import CProgram, ReproError, kvm_cap_name
    from minivmm.repro.origin import Origin, load_with_source
    from minivmm.repro.prediction import ModelSummary

    host = read_host_info()
    model = modelled_kernel(args.hz, args.platform, this_host(host))
    plat, hz = model.platform, model.hz
    if plat is None:
        raise CliError(f"cannot tell the KVM platform from /sys/module; pass --platform {'|'.join(PLATFORMS)}")
    if hz is None:
        raise CliError("cannot read CONFIG_HZ (no /proc/config.gz or /boot/config-*); pass --hz")
    assert model.hz_source is not None and model.platform_source is not None  # a value comes with its source
    name = args.sequence if args.sequence != "auto" else default_sequence(plat)
    try:
        seq, source = load_with_source(name)
    except SequenceError as e:
        raise CliError(str(e)) from None
    seqinput.refuse_what_the_kernel_refuses(seq, plat)
    try:
        program = CProgram(seq, kvm_cap_name, plat)
    except ReproError as e:
        raise CliError(str(e)) from None
    out = Output(args.output or "-", "--output", suffix=".c")

    options = [*(["--repeat", str(args.repeat)] if args.repeat != 100 else []),
               *(["--kselftest"] if args.kselftest else []), *(["--hz", str(hz)] if args.hz else []),
               *(["--platform", plat] if args.platform else [])]
    command = " ".join(["minivmm repro --sequence", name, *options])
    origin = Origin(source, command, host.kernel, host.machine, hz, model.hz_source, plat, model.platform_source,
                    __version__)
    out.write(program.text(origin, ModelSummary(seq, hz, plat, args.samples), args.repeat, args.kselftest))
    if out.stream is not None:
        return 0
    how = ("copy it to tools/testing/selftests/kvm/ and add it to the x86 tests of its Makefile" if args.kselftest
           else f"build it with gcc -O2 -Wall -o {os.path.splitext(os.path.basename(args.output))[0]} {args.output}")
    sys.stderr.write(f"minivmm repro: {args.output}: {len(seq.steps)} steps of {seq.name}; {how}\n")
    return 0


COMMAND = Command("repro", repro, HELP,
                  "write a set-up sequence as a stand-alone C reproducer (or a KVM selftest)",
                  epilog=EPILOG)
