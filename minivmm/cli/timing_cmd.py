"""``minivmm timing``: time a VM set-up sequence on the host kernel against the published report and
the kernel model, and say which kernel variant the host behaves like."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from minivmm.cli import gate_opts
from minivmm.cli.errors import CliError, ExitCode, kvm_unavailable, resource_error
from minivmm.cli.options import int_range
from minivmm.kvm.paths import DEFAULT_DEVICE_PATH

if TYPE_CHECKING:
    from minivmm.host import HostInfo


def _kvm_refusal(kvm_path: str, reason: str) -> CliError:
    """The error for a KVM device the host facts found unusable. It is opened once more for the exception,
    whose errno tells "missing or not accessible" (exit 4) from "not a KVM device" (exit 2)."""
    from minivmm.kvm.errors import KvmUnavailable
    from minivmm.kvm.system import Kvm
    try:
        Kvm(kvm_path).close()
    except KvmUnavailable as e:
        return kvm_unavailable(e)
    return CliError(reason, ExitCode.KVM_UNAVAILABLE)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``timing`` command."""
    p = subparsers.add_parser(
        "timing", help="time the VM set-up ioctls on this host; name the kernel variant it behaves like",
        description="Time the VM set-up ioctls of a sequence on this host, side by side with the published "
                    "report (Nikita Kalyazin, Feb 13 2026: the first KVM_CREATE_VCPU took 25.2 ms at HZ=100 "
                    "after commit 7d9a0273c459) and the kernel model's variants, and name the variant the "
                    "host behaves like. Prints one repetition strace -T style, then min/p10/p50/p90/max per "
                    "ioctl, the model's predictions at this host's HZ and platform, the fit of each variant, "
                    "and a verdict.",
        epilog="Exit codes: 0 measured and compared; 1 the host refused a step the model accepts; 2 bad "
               "usage or input (sequence, --plot path, options); 4 /dev/kvm missing or not accessible; "
               "130 Ctrl-C (what was measured so far is printed, marked partial; with --churn, nothing).")
    p.add_argument("-s", "--sequence", default="auto", metavar="NAME|FILE",
                   help="a named sequence (firecracker, registrations-first, arm64-order, late-registration, churn), "
                        "a sequence file, or auto: firecracker where the first vCPU maps the APIC-access page "
                        "(vmx, svm: the stall lands in KVM_CREATE_VCPU 0), registrations-first elsewhere (it "
                        "lands in the first memslot) (default: auto)")
    p.add_argument("-r", "--repeat", type=int_range(1, 100_000), default=100, metavar="N",
                   help="repetitions, each in a fresh VM (default: 100)")
    p.add_argument("--jitter", dest="jitter", action="store_true", default=True,
                   help="start each repetition at a random point within a jiffy, so the tick phase is "
                        "sampled (the default)")
    p.add_argument("--no-jitter", dest="jitter", action="store_false",
                   help="run the repetitions back to back, which locks them to the tick and hides the "
                        "distribution")
    p.add_argument("--hz", type=int_range(1, 10000), default=None, metavar="HZ",
                   help="CONFIG_HZ for the model (default: read from the kernel config)")
    p.add_argument("-p", "--platform", default=None, metavar="PLATFORM",
                   help="vmx, svm, svm-noavic, pvm or arm64 (default: from the loaded KVM module and its "
                        "avic parameter)")
    p.add_argument("-n", "--samples", type=int_range(10, 1_000_000), default=2000, metavar="N",
                   help="model samples per variant (default: 2000)")
    p.add_argument("--json", dest="as_json", action="store_true",
                   help="one JSON object: verdict, samples, quantiles, predictions, published figures, "
                        "host facts")
    p.add_argument("--plot", dest="plot_path", default=None, metavar="FILE.png",
                   help="also draw measured vs predicted distributions to this PNG (needs the plot extra: "
                        "matplotlib)")
    p.add_argument("--seed", type=int_range(), default=0, metavar="SEED",
                   help="seed for the jitter and the model (default: 0)")
    p.add_argument("--kvm", dest="kvm_path", default=DEFAULT_DEVICE_PATH, metavar="PATH",
                   help="the KVM device to open (default: /dev/kvm)")
    p.add_argument("--calibrate", action="store_true",
                   help="instead of timing a sequence, measure this host's latency from a timer firing to "
                        "the waiter running, and (with tracefs) how its CPUs tick, which decides when a timer "
                        "fires a tick late (--repeat runs, 300 or more recommended), and save both as a "
                        "host profile to --profile FILE, or to $XDG_CONFIG_HOME/minivmm/host-profile.json")
    p.add_argument("--profile", default=None, metavar="FILE.json",
                   help="a host profile (from --calibrate): the model draws each timer's wake-up latency "
                        "from it instead of the fixed cost, and ticks its CPUs as the profile measured (a "
                        "timer then fires a tick late where the host's ticks make it); with --calibrate, "
                        "where to write it")
    p.add_argument("--churn", action="store_true",
                   help="instead of timing the steps, create, set up and destroy VMs back to back (--repeat "
                        "cycles per thread, on one thread and then on --threads at once) and report cycles per "
                        "second beside each variant's prediction (default sequence: churn)")
    p.add_argument("--threads", type=int_range(2, 256), default=None, metavar="N",
                   help="with --churn: the threads of the parallel run (default: the number of CPUs, at least 2)")
    gate_opts.add_options(p)
    p.set_defaults(handler=run)


def _calibrate(args: argparse.Namespace, hz: int, plat: str, kernel: str, kvm_error: str | None) -> int:
    """``--calibrate``: check where the profile goes, measure, make the profile, write it (only over a
    profile we wrote before)."""
    import json

    from kernel_model.profile import default_path, is_profile_file
    from minivmm.cli.progress import ProgressBar
    from minivmm.files import Output
    from minivmm.kvm.errors import KvmError, KvmUnavailable
    from minivmm.timing.calibrate import CalibrationError, calibrate, describe

    path = args.profile or default_path()
    if args.profile is None:
        _make_config_directory(path)
    out = Output(path, "--profile", suffix=".json", may_replace=is_profile_file, kind="a minivmm host profile")
    if kvm_error:
        raise _kvm_refusal(args.kvm_path, kvm_error)
    try:
        with ProgressBar("calibrating", args.repeat, sys.stderr) as bar:
            cal = calibrate(args.repeat, hz, plat, kernel, args.kvm_path, seed=args.seed, on_progress=bar.update)
        profile = cal.profile
    except KvmUnavailable as e:
        raise kvm_unavailable(e) from None
    except KvmError as e:
        raise resource_error(e) or CliError(f"calibration: {e.strerror} (the host refused a step)",
                                            ExitCode.GUEST_FAILED) from None
    except CalibrationError as e:
        raise CliError(f"calibration: {e}", ExitCode.GUEST_FAILED) from None
    out.write(json.dumps(profile.to_json(), indent=1) + "\n")
    sys.stdout.write(f"host profile: {path}\n{describe(profile, cal.runs, cal.ticks)}"
                     f"use it with: minivmm model --profile {path} / minivmm timing --profile {path}\n")
    return 0


def _churn(args: argparse.Namespace, host: HostInfo, hz: int, plat: str, plat_source: str) -> int:
    """``--churn``: refuse what does not apply, then one thread's cycles and --threads threads' cycles,
    each beside every variant's prediction."""
    import os

    from minivmm.cli import seqinput
    from minivmm.kvm.errors import KvmError, KvmUnavailable
    from minivmm.timing.churn import ChurnFailed, churn
    from minivmm.timing.churn_report import compare_churn, render, to_json
    from minivmm.timing.compare import TimingHost
    from minivmm.timing.runner import SequenceUnrunnable

    for given, option in ((args.baseline, "--baseline"), (args.plot_path, "--plot"),
                          (args.out_format == "openmetrics" or None, "--format openmetrics")):
        if given:
            raise CliError(f"--churn cannot be used with {option} (it reports rates, not steps)")
    costs = seqinput.profile_costs(args.profile, hz)
    seq = seqinput.load("churn" if args.sequence == "auto" else args.sequence)
    seqinput.refuse_what_the_kernel_refuses(seq, plat)
    if host.kvm_error:
        raise _kvm_refusal(args.kvm_path, host.kvm_error)
    cpus = os.cpu_count() or 1
    threads = args.threads or max(2, cpus)
    loadavg = os.getloadavg()
    try:
        runs = [churn(seq, args.repeat, n, args.kvm_path) for n in (1, threads)]
    except ChurnFailed as e:
        cause = e.__cause__
        if isinstance(cause, KvmUnavailable):
            raise kvm_unavailable(cause) from None
        if isinstance(cause, KvmError):
            raise resource_error(cause) or CliError(f"sequence {seq.name}: {cause.strerror} (the host refused "
                                                    "this step)", ExitCode.GUEST_FAILED) from None
        if isinstance(cause, SequenceUnrunnable):
            raise CliError(f"sequence {seq.name}: {cause}") from None
        raise
    facts = TimingHost(kernel=host.kernel, machine=os.uname().machine, hz=hz,
                       hz_source="--hz" if args.hz else host.hz_source, platform=plat, platform_source=plat_source,
                       backend_module=host.backend_module, srcutree_params=host.srcutree_params, jitter=False,
                       host_hz=host.hz, host_platform=host.platform, profile=args.profile)
    comparison = compare_churn(seq, runs, hz, plat, cpus, loadavg, args.seed, costs)
    if args.out_format == "json":
        import json
        json.dump(to_json(comparison, facts), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(comparison, facts, sys.stdout)
    return 0


def _make_config_directory(path: str) -> None:
    """Create the default profile's directory (``$XDG_CONFIG_HOME/minivmm``); one line if it cannot be."""
    import os
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise resource_error(e) or CliError(
            f"--profile: the default directory {directory!r} cannot be created ({e.strerror}; "
            "check XDG_CONFIG_HOME and HOME, or give --profile FILE.json)") from None


def _end_with_143_on_sigterm() -> None:
    """SIGTERM ends the command as Ctrl-C does, with the exit code the table gives it (143).

    Python's default for SIGTERM kills the process where it stands: the kernel then closes the VM,
    but the command's own clean-up (``finally`` blocks, the calibration's ExitStack, the progress
    bar's line) never runs. Raised as SystemExit from the main thread, it unwinds through them. No
    output file is half-written either way: profiles and plots are written atomically, at the end."""
    import signal

    from minivmm.cli.errors import ExitCode

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(int(ExitCode.TERMINATED))

    signal.signal(signal.SIGTERM, terminate)


def run(args: argparse.Namespace) -> int:
    """Measure, compare with the model and the published report, print the verdict."""
    import os

    _end_with_143_on_sigterm()

    from kernel_model.platforms import PLATFORMS, default_sequence
    from minivmm.host import read_host_info
    from minivmm.kvm.errors import KvmError, KvmUnavailable
    from minivmm.timing.compare import TimingHost, compare, to_json
    from minivmm.timing.report import render
    from minivmm.cli import seqinput
    from minivmm.cli.progress import ProgressBar
    from minivmm.timing.runner import MeasurementInterrupted, SequenceUnrunnable, measure

    gate = gate_opts.prepare(args)  # --baseline, --threshold, --format: checked (and loaded) first
    sequence, repeat, jitter, hz, platform = args.sequence, args.repeat, args.jitter, args.hz, args.platform
    samples, plot_path, seed, kvm_path = args.samples, args.plot_path, args.seed, args.kvm_path
    # The user's own arguments are checked first (on any machine), /dev/kvm last.
    host = read_host_info(kvm_path)
    plat = platform or host.platform
    plat_source = "--platform" if platform else f"{host.backend_module} loaded"
    if plat is None:
        raise gate_opts.host_unreadable(gate, CliError(
            "cannot tell the KVM platform from /sys/module; pass --platform vmx|svm|svm-noavic|pvm|arm64"),
            host.kvm_error)
    if plat not in PLATFORMS:
        raise CliError(f"unknown platform {plat!r} (known: {', '.join(PLATFORMS)})")
    host_hz = hz or host.hz
    if host_hz is None:
        raise gate_opts.host_unreadable(gate, CliError(
            "cannot read CONFIG_HZ (no /proc/config.gz or /boot/config-*); pass --hz"))
    if args.calibrate:
        return _calibrate(args, host_hz, plat, host.kernel or "", host.kvm_error)
    if args.churn:
        return _churn(args, host, host_hz, plat, plat_source)
    if args.threads is not None:
        raise CliError("--threads needs --churn (the parallel run of the churn)")
    costs = seqinput.profile_costs(args.profile, host_hz)
    name = sequence if sequence != "auto" else default_sequence(plat)
    seq = seqinput.load(name)
    seqinput.refuse_what_the_kernel_refuses(seq, plat)
    plot_out = None
    if plot_path is not None:
        from minivmm.cli.compare_cmd import plot_output
        plot_out = plot_output(plot_path)
    if host.kvm_error:
        raise gate_opts.unusable(gate, _kvm_refusal(kvm_path, host.kvm_error))

    from minivmm.timing.pressure import PressureWindow
    pressure = PressureWindow.start()  # how busy the CPUs are while we measure (PSI), for the JSON and the gate
    partial = None
    try:
        with ProgressBar(f"timing {seq.name}", repeat, sys.stderr) as bar:
            reps, overhead = measure(seq, repeat, jitter, host_hz, kvm_path, on_progress=bar.update, seed=seed)
    except MeasurementInterrupted as e:
        if not e.reps:
            raise KeyboardInterrupt from None  # nothing measured: nothing to report
        reps, overhead, partial = e.reps, e.overhead, repeat
    except SequenceUnrunnable as e:
        raise CliError(f"sequence {seq.name}: {e}") from None
    except KvmUnavailable as e:
        raise gate_opts.unusable(gate, kvm_unavailable(e)) from None
    except KvmError as e:
        refused = CliError(f"sequence {seq.name}: {e.strerror} (the host refused this step)", ExitCode.GUEST_FAILED)
        raise resource_error(e) or gate_opts.unusable(gate, refused) from None
    cpu_pressure_pct = pressure.percent()
    comparison = compare(seq, reps, host_hz, plat, samples, seed, costs=costs)
    facts = TimingHost(kernel=host.kernel, machine=os.uname().machine, hz=host_hz,
                       hz_source="--hz" if hz else host.hz_source, platform=plat, platform_source=plat_source,
                       backend_module=host.backend_module, srcutree_params=host.srcutree_params, jitter=jitter,
                       host_hz=host.hz, host_platform=host.platform, partial=partial, profile=args.profile,
                       cpu_pressure_pct=cpu_pressure_pct)
    if plot_out is not None:
        from minivmm.timing.plot import plot
        plot_out.write_with(lambda f: plot(comparison, f, host_hz, plat))
    doc = to_json(comparison, facts, overhead)
    doc["partial"] = {"completed": len(reps), "requested": repeat} if partial else None

    def text() -> None:
        render(comparison, facts, overhead, sys.stdout)
        if args.profile:
            sys.stdout.write(f"model: timer and wake-up latencies drawn from the host profile {args.profile}\n")
        if plot_out is not None and plot_out.stream is None:
            sys.stdout.write(f"plot: {plot_path}\n")
    if partial:  # an interrupted measurement is reported, but it decides no gate
        gate = None
    code = gate_opts.emit(args, gate, doc, text)
    return int(ExitCode.INTERRUPTED) if partial else code

