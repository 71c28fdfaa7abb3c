"""``minivmm timing``: time a VM set-up sequence on the host kernel against the published report and
the kernel model, and say which kernel variant the host behaves like."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated

import typer

from minivmm.cli import gate_opts
from minivmm.cli.app import Command, run_command
from minivmm.cli.errors import CliError, ExitCode, kvm_unavailable, resource_error
from minivmm.cli.options import (
    DEFAULT_KVM,
    Format,
    HostHz,
    HostPlatform,
    Json,
    Kvm,
    Profile,
    ReportTo,
    Samples,
    Seed,
    int_range,
    percentage,
    sequence_option,
)

if TYPE_CHECKING:
    from kernel_model.sequences import Sequence
    from minivmm.host import HostInfo, ModelledKernel
    from minivmm.timing.noise import NoiseModel
    from minivmm.timing.pressure import Load
    from minivmm.timing.runner import Repetition


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


HELP = ("Time the VM set-up ioctls of a sequence on this host, side by side with the published report (Nikita "
        "Kalyazin, Feb 13 2026: the first KVM_CREATE_VCPU took 25.2 ms at HZ=100 after commit 7d9a0273c459) "
        "and the kernel model's variants, and name the variant the host behaves like. Prints one repetition "
        "strace -T style, then min/p10/p50/p90/max per ioctl, the model's predictions at this host's HZ and "
        "platform, the fit of each variant, and a verdict.")
EPILOG = ("Exit codes as minivmm --help lists them; here 1 means the host refused a step the model accepts, "
          "and with --baseline 0/1/125 are the gate's pass/regressed/unusable. Ctrl-C prints what was "
          "measured so far, marked partial, and exits 130 (with --churn, it prints nothing).")


def timing(
    sequence: Annotated[str, sequence_option(
        "auto: firecracker where the first vCPU maps the APIC-access page (vmx, svm), registrations-first "
        "elsewhere; churn with --churn")] = "auto",
    repeat: Annotated[int, typer.Option("-r", "--repeat", metavar="N", parser=int_range(1, 100_000),
                                        help="repetitions, each in a fresh VM")] = 100,
    jitter: Annotated[bool, typer.Option(
        "--jitter/--no-jitter", help="start each repetition at a random point within a jiffy, so the tick phase "
                                     "is sampled (--no-jitter: back to back, locked to the tick, which hides "
                                     "the distribution)")] = True,
    hz: HostHz = None,
    platform: HostPlatform = None,
    samples: Samples = 2000,
    as_json: Json = False,
    plot_path: Annotated[str | None, typer.Option(
        "--plot", metavar="FILE.png",
        help="also draw measured vs predicted distributions to this PNG (needs the plot extra: "
             "matplotlib)")] = None,
    seed: Seed = 0,
    kvm_path: Kvm = DEFAULT_KVM,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="instead of timing a sequence, measure this host's latency from a timer firing to "
                            "the waiter running, and (with tracefs) how its CPUs tick, which decides when a "
                            "timer fires a tick late (--repeat runs, 300 or more recommended), and save both "
                            "as a host profile to --profile")] = False,
    profile: Profile = None,
    churn: Annotated[bool, typer.Option(
        "--churn",
        help="instead of timing the steps, create, set up and destroy VMs back to back (--repeat cycles per "
             "thread, on one thread and then on --threads at once) and report cycles per second beside each "
             "variant's prediction (default sequence: churn)")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", metavar="N", parser=int_range(2, 256), show_default="the number of CPUs, at least 2",
        help="with --churn: the threads of the parallel run, 2 to 256")] = None,
    out_format: Format = None,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", metavar="BASE.json",
        help="a regression gate: compare this run with a recorded `timing --json` run of the same sequence and "
             "exit 0 (no step regressed), 1 (a step regressed significantly past --threshold; named) or 125 "
             "(unusable measurement: git bisect run's skip). --sequence defaults to the baseline's")] = None,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", metavar="N%", parser=percentage, show_default="20%",
        help="with --baseline: how much slower (its 10% trimmed mean, relative to the baseline's) a step must "
             "be to count as regressed")] = None,
    output: ReportTo = None,
) -> int:
    """Time a sequence on this host (see HELP)."""
    args = SimpleNamespace(**locals())  # locals() here: exactly the parameters
    return run_command(run, args, output=output)


def _calibrate(args: SimpleNamespace, hz: int, plat: str, kernel: str, kvm_error: str | None) -> int:
    """``--calibrate``: check where the profile goes, measure, make the profile, write it (only over a
    profile we wrote before)."""
    import json

    from kernel_model.profile import default_path, is_profile_file
    from minivmm.files import Output
    from minivmm.kvm.errors import KvmError, KvmUnavailable
    from minivmm.progress import ProgressBar
    from minivmm.timing.calibrate import CalibrationError, calibrate, describe

    path = args.profile or default_path()
    if args.profile is None:
        _make_config_directory(path)
    out = Output(path, "--profile", suffix=".json", may_replace=is_profile_file, kind="a minivmm host profile")
    if kvm_error:
        raise _kvm_refusal(args.kvm_path, kvm_error)
    try:
        with ProgressBar("calibrating", args.repeat) as bar:
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
    if args.as_json or args.out_format == "json":
        from minivmm.schemas import stamp
        from minivmm.timing.calibrate import late_shares
        q = profile.timer_latency_ns
        n = len(q) - 1
        first, second = late_shares(cal.runs, hz)
        summary = {"runs": len(cal.runs), "hz": hz, "platform": plat, "load_average": list(profile.loadavg),
                   "timer_latency_us": {"p50": q[n // 2] / 1000, "p90": q[n * 9 // 10] / 1000,
                                        "p99": q[n * 99 // 100] / 1000, "max": q[n] / 1000},
                   "late_memslot_share": {"first": first, "second": second},
                   "ticks_measured_with": profile.ticks_measured_with or None}
        json.dump(stamp("calibration", {"profile_path": path, "summary": summary, "profile": profile.to_json()}),
                  sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(f"host profile: {path}\n{describe(profile, cal.runs, cal.ticks)}"
                     f"use it with: minivmm model --profile {path} / minivmm timing --profile {path}\n")
    return 0


def _churn(args: SimpleNamespace, host: HostInfo, model: ModelledKernel) -> int:
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
    hz, plat, plat_source = model.hz, model.platform, model.platform_source
    assert hz is not None and plat is not None and plat_source is not None  # run() refused unknown ones
    costs = seqinput.profile_costs(args.profile, hz, plat)
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
                       hz_source=model.hz_source, platform=plat, platform_source=plat_source,
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


def _noise(profile_path: str | None) -> NoiseModel:
    """The verdict's noise model: the default, with the host profile's fixed-cost scatter where it has
    one (:mod:`minivmm.timing.noise`)."""
    from minivmm.cli import seqinput
    from minivmm.timing.noise import DEFAULT, StudentT
    profile = seqinput.load_profile(profile_path)
    if profile is None or profile.fixed_cost_scatter is None:
        return DEFAULT
    scale, df = profile.fixed_cost_scatter
    return DEFAULT.with_scatter(StudentT(0.0, scale, df), f"scatter: the host profile {profile_path}")


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


def _end_with_143_on_sigterm() -> object:
    """SIGTERM ends the command as Ctrl-C does, with the exit code the table gives it (143).

    Python's default for SIGTERM kills the process where it stands: the kernel then closes the VM,
    but the command's own clean-up (``finally`` blocks, the calibration's ExitStack, the progress
    bar's line) never runs. Raised as SystemExit from the main thread, it unwinds through them. No
    output file is half-written either way: profiles and plots are written atomically, at the end."""
    import signal

    from minivmm.cli.errors import ExitCode

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(int(ExitCode.TERMINATED))

    return signal.signal(signal.SIGTERM, terminate)


def run(args: SimpleNamespace) -> int:
    """Measure, compare with the model and the published report, print the verdict. The SIGTERM
    handler is the command's own: the one before it is put back on the way out (a caller that runs
    the command in its own process, as the tests do, keeps its handler)."""
    import signal

    previous = _end_with_143_on_sigterm()
    try:
        return gate_opts.guarded(args.baseline is not None, lambda: _run(args))
    finally:
        signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]


def _measure(seq: Sequence, args: SimpleNamespace, gate: gate_opts.Gate | None,
             host_hz: int) -> tuple[list[Repetition], dict[str, float], int | None, Load]:
    """The host measurement with the load while it ran: (repetitions, timer overhead, the requested count
    when an interrupt cut it short else None, load); the host's refusals as timing's errors."""
    from minivmm.kvm.errors import KvmError, KvmUnavailable
    from minivmm.progress import ProgressBar
    from minivmm.timing.pressure import LoadWindow
    from minivmm.timing.runner import MeasurementInterrupted, SequenceUnrunnable, measure

    repeat = args.repeat
    window = LoadWindow.start()  # how busy the CPUs are while we measure (PSI, load average): report, JSON, gate
    partial = None
    try:
        with ProgressBar(f"timing {seq.name}", repeat) as bar:
            reps, overhead = measure(seq, repeat, args.jitter, host_hz, args.kvm_path, on_progress=bar.update,
                                     seed=args.seed)
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
    return reps, overhead, partial, window.end()


def _run(args: SimpleNamespace) -> int:
    import os

    from kernel_model.platforms import PLATFORMS, default_sequence
    from minivmm.cli import seqinput
    from minivmm.host import modelled_kernel, read_host_info, this_host
    from minivmm.timing.compare import TimingHost, compare, to_json
    from minivmm.timing.report import render

    gate = gate_opts.prepare(args)  # --baseline, --threshold, --format: checked (and loaded) first
    sequence, repeat, jitter, hz, platform = args.sequence, args.repeat, args.jitter, args.hz, args.platform
    samples, plot_path, seed, kvm_path = args.samples, args.plot_path, args.seed, args.kvm_path
    # The user's own arguments are checked first (on any machine), /dev/kvm last.
    host = read_host_info(kvm_path)
    model = modelled_kernel(hz, platform, this_host(host))
    plat, plat_source, host_hz = model.platform, model.platform_source, model.hz
    if plat is None:
        raise gate_opts.host_unreadable(gate, CliError(
            f"cannot tell the KVM platform from /sys/module; pass --platform {'|'.join(PLATFORMS)}"),
            host.kvm_error)
    if host_hz is None:
        raise gate_opts.host_unreadable(gate, CliError(
            "cannot read CONFIG_HZ (no /proc/config.gz or /boot/config-*); pass --hz"))
    assert plat_source is not None and model.hz_source is not None  # a value always comes with its source
    if args.calibrate:
        return _calibrate(args, host_hz, plat, host.kernel or "", host.kvm_error)
    if args.churn:
        return _churn(args, host, model)
    if args.threads is not None:
        raise CliError("--threads needs --churn (the parallel run of the churn)")
    costs = seqinput.profile_costs(args.profile, host_hz, plat)
    name = sequence if sequence != "auto" else default_sequence(plat)
    seq = seqinput.load(name)
    seqinput.refuse_what_the_kernel_refuses(seq, plat)
    plot_out = None
    if plot_path is not None:
        from minivmm.cli.compare_cmd import plot_output
        plot_out = plot_output(plot_path)
    if host.kvm_error:
        raise gate_opts.unusable(gate, _kvm_refusal(kvm_path, host.kvm_error))

    reps, overhead, partial, load = _measure(seq, args, gate, host_hz)
    comparison = compare(seq, reps, host_hz, plat, samples, seed, costs=costs, noise=_noise(args.profile))
    facts = TimingHost(kernel=host.kernel, machine=os.uname().machine, hz=host_hz,
                       hz_source=model.hz_source, platform=plat, platform_source=plat_source,
                       backend_module=host.backend_module, srcutree_params=host.srcutree_params, jitter=jitter,
                       host_hz=host.hz, host_platform=host.platform, partial=partial, profile=args.profile,
                       cpu_pressure_pct=load.cpu_pressure_pct, load_average=load.load_average)
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


COMMAND = Command("timing", timing, HELP,
                  "time the VM set-up ioctls on this host; name the kernel variant it behaves like",
                  epilog=EPILOG)
