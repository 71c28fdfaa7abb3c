"""``minivmm timing``: time a VM set-up sequence on the host kernel against the published report and
the kernel model, and say which kernel variant the host behaves like."""

from __future__ import annotations

import json
import os
import platform as pyplatform
import sys

import typer

from minivmm.cli.errors import CliError


def _check_plot_destination(path: str) -> None:
    """Refuse, before measuring, a plot path that cannot be written."""
    from minivmm.timing.plot import PlotUnavailable, check_available
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CliError(f"--plot {path!r} is a directory; give a file name such as timing.png")
    if not os.path.isdir(directory):
        raise CliError(f"--plot {path!r}: the directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise CliError(f"--plot {path!r} cannot be written (permission denied)")
    try:
        check_available()
    except PlotUnavailable as e:
        raise CliError(str(e)) from None


def timing(
    sequence: str = typer.Option("auto", "--sequence", "-s",
                                 help="A named sequence (firecracker, registrations-first, arm64-order, "
                                      "late-registration), a sequence file, or auto: firecracker on VMX "
                                      "(the stall lands in KVM_CREATE_VCPU 0), registrations-first "
                                      "elsewhere (it lands in the first memslot)."),
    repeat: int = typer.Option(100, "--repeat", "-r", min=1, max=100_000,
                               help="Repetitions, each in a fresh VM."),
    jitter: bool = typer.Option(True, "--jitter/--no-jitter",
                                help="Start each repetition at a random point within a jiffy, so the tick "
                                     "phase is sampled (the default); --no-jitter runs them back to back, "
                                     "which locks them to the tick and hides the distribution."),
    hz: int | None = typer.Option(None, "--hz", min=1, max=10000,
                                     help="CONFIG_HZ for the model (default: read from the kernel config)."),
    platform: str | None = typer.Option(None, "--platform", "-p",
                                           help="vmx, svm, pvm or arm64 (default: from the loaded KVM module)."),
    samples: int = typer.Option(2000, "--samples", "-n", min=10, max=1_000_000,
                                help="Model samples per variant."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: verdict, samples, quantiles, "
                                                       "predictions, published figures, host facts."),
    plot_path: str | None = typer.Option(None, "--plot", help="Also draw measured vs predicted "
                                            "distributions to this PNG (needs the plot extra: matplotlib)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the jitter and the model."),
    kvm_path: str = typer.Option("/dev/kvm", "--kvm", help="The KVM device to open."),
) -> int:
    """Time the VM set-up ioctls of a sequence on this host, side by side with the published report
    (seed 001) and the kernel model's variants, and name the variant the host behaves like.

    Prints one repetition strace -T style, then min/p10/p50/p90/max per ioctl, the model's predictions
    at this host's HZ and platform, the fit of each variant, and a verdict.
    """
    from kernel_model.platforms import PLATFORMS
    from kernel_model.sequences import SequenceError, load_sequence
    from minivmm.host import read_host_info
    from minivmm.kvm.errors import KvmError, KvmUnavailable
    from minivmm.timing.compare import compare, to_json
    from minivmm.timing.report import render
    from minivmm.timing.runner import SequenceUnrunnable, check_runnable, measure

    # The user's own arguments are checked first (on any machine), /dev/kvm last.
    host = read_host_info(kvm_path)
    plat = platform or host.platform
    plat_source = "--platform" if platform else f"{host.backend_module} loaded"
    if plat is None:
        raise CliError("cannot tell the KVM platform from /sys/module; pass --platform vmx|svm|pvm|arm64")
    if plat not in PLATFORMS:
        raise CliError(f"unknown platform {plat!r} (known: {', '.join(PLATFORMS)})")
    host_hz = hz or host.hz
    if host_hz is None:
        raise CliError("cannot read CONFIG_HZ (no /proc/config.gz or /boot/config-*); pass --hz")
    name = sequence if sequence != "auto" else ("firecracker" if plat == "vmx" else "registrations-first")
    try:
        seq = load_sequence(name)
    except SequenceError as e:
        raise CliError(str(e)) from None
    try:
        check_runnable(seq)
    except SequenceUnrunnable as e:
        raise CliError(f"sequence {seq.name}: {e}") from None
    if plot_path:
        _check_plot_destination(plot_path)
    if host.kvm_error:
        raise CliError(host.kvm_error)

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    progress = Progress(TextColumn("timing {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeRemainingColumn(), transient=True, disable=not sys.stderr.isatty(),
                        console=None)
    try:
        with progress:
            task = progress.add_task(seq.name, total=repeat)
            reps, overhead = measure(seq, repeat, jitter, host_hz, kvm_path,
                                     on_progress=lambda n: progress.update(task, completed=n), seed=seed)
    except SequenceUnrunnable as e:
        raise CliError(f"sequence {seq.name}: {e}") from None
    except KvmUnavailable as e:
        raise CliError(e.strerror) from None
    except KvmError as e:
        raise CliError(f"sequence {seq.name}: {e.strerror} (the host refused this step)", code=1) from None
    comparison = compare(seq, reps, host_hz, plat, samples, seed)
    facts = {"kernel": host.kernel, "machine": pyplatform.machine(), "hz": host_hz,
             "hz_source": "--hz" if hz else host.hz_source, "platform": plat, "platform_source": plat_source,
             "backend_module": host.backend_module, "srcutree_params": host.srcutree_params, "jitter": jitter}
    if plot_path:
        from minivmm.timing.plot import plot
        plot(comparison, plot_path, host_hz, plat)
    if as_json:
        json.dump(to_json(comparison, facts, overhead), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(comparison, facts, overhead, sys.stdout)
        if plot_path:
            sys.stdout.write(f"plot: {plot_path}\n")
    return 0


def register(app: typer.Typer) -> None:
    """Add the ``timing`` command to ``app``."""
    app.command()(timing)
