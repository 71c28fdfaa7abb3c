"""``minivmm repro``: write a set-up sequence as one C program (or KVM selftest) that times it as
``minivmm timing`` does, for someone who will never install minivmm."""

from __future__ import annotations

import argparse
import sys

from minivmm.cli.errors import CliError
from minivmm.cli.options import int_range


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``repro`` command."""
    p = subparsers.add_parser(
        "repro", help="write a set-up sequence as a stand-alone C reproducer (or a KVM selftest)",
        description="Write a VM set-up sequence as one self-contained C file (libc and <linux/kvm.h> only; "
                    "gcc -O2 -Wall, also -static) that runs it in a fresh VM per repetition, each at a random "
                    "point in a jiffy, times each ioctl beside the system call, and prints one repetition "
                    "strace -T style and min/p10/p50/p90/max per step (--json: the steps as `minivmm timing "
                    "--json` has them). Its header says what it reproduces, where it was generated, and what "
                    "each kernel variant predicts for the stalled steps at this host's HZ and platform.",
        epilog="Exit codes: 0 written; 2 bad usage or input (unknown sequence, one the kernel would refuse, one "
               "with nothing to time, an output path that must not or cannot be written).")
    p.add_argument("-s", "--sequence", default="auto", metavar="NAME|FILE",
                   help="a named sequence, a sequence file (e.g. from trace --save-sequence), or auto: the one "
                        "`minivmm timing` runs by default on this platform (default: auto)")
    p.add_argument("-o", "--output", default=None, metavar="FILE.c",
                   help="write the program here (default, or -: standard output)")
    p.add_argument("-r", "--repeat", type=int_range(1, 100_000), default=100, metavar="N",
                   help="the program's default number of repetitions (default: 100)")
    p.add_argument("--kselftest", action="store_true",
                   help="write a KVM selftest instead (kvm_util/test_util, ksft_* results, KSFT_SKIP "
                        "without /dev/kvm)")
    p.add_argument("--hz", type=int_range(1, 10000), default=None, metavar="HZ",
                   help="CONFIG_HZ of the predictions in the header (default: read from the kernel config)")
    p.add_argument("-p", "--platform", default=None, metavar="PLATFORM",
                   help="vmx, svm, svm-noavic, pvm or arm64, for the predictions (default: from the loaded "
                        "KVM module)")
    p.add_argument("-n", "--samples", type=int_range(10, 1_000_000), default=2000, metavar="N",
                   help="model samples per variant (default: 2000)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load and check the sequence and the output path, predict, write the C file."""
    import os

    from kernel_model.platforms import PLATFORMS, default_sequence
    from kernel_model.sequences import SequenceError
    from minivmm import __version__
    from minivmm.cli import seqinput
    from minivmm.files import Output
    from minivmm.host import read_host_info
    from minivmm.repro.generate import CProgram, ReproError, kvm_cap_name
    from minivmm.repro.origin import Origin, load_with_source
    from minivmm.repro.prediction import ModelSummary

    host = read_host_info()
    plat = args.platform or host.platform
    if plat is None:
        raise CliError("cannot tell the KVM platform from /sys/module; pass --platform vmx|svm|svm-noavic|pvm|arm64")
    if plat not in PLATFORMS:
        raise CliError(f"unknown platform {plat!r} (known: {', '.join(PLATFORMS)})")
    hz = args.hz or host.hz
    if hz is None:
        raise CliError("cannot read CONFIG_HZ (no /proc/config.gz or /boot/config-*); pass --hz")
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
    out = Output(args.output or "-", "-o", suffix=".c")

    options = [*(["--repeat", str(args.repeat)] if args.repeat != 100 else []),
               *(["--kselftest"] if args.kselftest else []), *(["--hz", str(hz)] if args.hz else []),
               *(["--platform", plat] if args.platform else [])]
    command = " ".join(["minivmm repro --sequence", name, *options])
    origin = Origin(source, command, host.kernel, host.machine, hz, "--hz" if args.hz else host.hz_source or "",
                    plat, "--platform" if args.platform else f"{host.backend_module} loaded", __version__)
    out.write(program.text(origin, ModelSummary(seq, hz, plat, args.samples), args.repeat, args.kselftest))
    if out.stream is not None:
        return 0
    how = ("copy it to tools/testing/selftests/kvm/ and add it to the x86 tests of its Makefile" if args.kselftest
           else f"build it with gcc -O2 -Wall -o {os.path.splitext(os.path.basename(args.output))[0]} {args.output}")
    sys.stderr.write(f"minivmm repro: {args.output}: {len(seq.steps)} steps of {seq.name}; {how}\n")
    return 0
