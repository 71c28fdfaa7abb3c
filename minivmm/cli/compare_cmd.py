"""``minivmm compare``: timing documents of one sequence side by side, which steps changed significantly,
and (``--gate``) the regression gate's decision on a recorded current run."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated

import typer

from minivmm.cli.app import Command, run_command
from minivmm.cli.errors import CliError, ExitCode, gate_exit_code
from minivmm.cli.options import Json, ReportTo, Seed, float_range, percentage

if TYPE_CHECKING:
    from minivmm.files import Output


HELP = ("Compare `minivmm timing --json` files of the same sequence: the first is the baseline (A), each other "
        "file is compared with it. Per step: p10/p50/p90 of each file; per compared file: the change of the 10% "
        "trimmed mean with its bootstrap confidence interval, Cliff's delta (effect size) and the permutation "
        "test's p-value after Holm's adjustment over all the steps. A step changed significantly when p < --alpha "
        "and its trimmed mean moved by at least --threshold of A's and at least --floor-us. Files of different "
        "sequences are refused; a different HZ, platform or kernel is warned about. Exits 0 once compared "
        "(whatever changed); with --gate, exits 0 (no regression), 1 (a step regressed) or 125 (unusable: too "
        "few repetitions or too noisy), as `timing --baseline` does.")
EXAMPLE = "minivmm compare before.json after.json"


def compare(
    files: Annotated[list[str], typer.Argument(metavar="FILE.json...", show_default=False,
                                               help="timing --json documents: the baseline first")],
    as_json: Json = False,
    plot_path: Annotated[str | None, typer.Option(
        "--plot", metavar="FILE.png",
        help="draw the changed steps' distributions overlaid, with jiffy gridlines (needs matplotlib)")] = None,
    alpha: Annotated[float | None, typer.Option(
        "--alpha", metavar="P", parser=float_range(1e-9, 0.5), show_default="0.01",
        help="family-wise significance level, after Holm's adjustment")] = None,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", metavar="N%", parser=percentage, show_default="10%; with --gate 20%",
        help="minimum change of a step's trimmed mean that counts, relative to the baseline's")] = None,
    floor_us: Annotated[float | None, typer.Option(
        "--floor-us", metavar="US", parser=float_range(0.0), show_default="a tenth of a jiffy at the baseline's HZ",
        help="minimum change of a step's trimmed mean that counts, in microseconds (400 at HZ=250; on a quiet "
             "host 20 catches microsecond-scale changes)")] = None,
    seed: Seed = 0,
    gate: Annotated[bool, typer.Option(
        "--gate", help="decide as `timing --baseline` does, on two recorded files BASELINE CURRENT: exit 0, 1 "
                       "or 125")] = False,
    output: ReportTo = None,
) -> int:
    """Compare timing documents (see HELP)."""
    args = SimpleNamespace(**locals())  # locals() here: exactly the parameters
    return run_command(run, args, output=output)


def run(args: SimpleNamespace) -> int:
    """Load, compare, print; with ``--gate``, map the decision to its exit code (and keep 1 for "a step
    regressed" only: :func:`minivmm.cli.gate_opts.guarded`)."""
    from minivmm.cli.gate_opts import guarded
    return guarded(args.gate, lambda: _run(args))


def _run(args: SimpleNamespace) -> int:
    from minivmm.compare.ab import (
        DEFAULT_ALPHA,
        DEFAULT_THRESHOLD,
        NotComparable,
        Settings,
        compare_documents,
        render,
        to_json,
    )
    from minivmm.compare.documents import DocumentError, load_timing
    from minivmm.compare.gate import DEFAULT_THRESHOLD as GATE_THRESHOLD
    from minivmm.compare.gate import decide

    if len(args.files) < 2:
        raise CliError("compare needs at least two files, the baseline first (e.g. minivmm compare before.json "
                       "after.json)")
    if args.gate and len(args.files) != 2:
        raise CliError(f"--gate takes exactly two files, BASELINE CURRENT (got {len(args.files)})")
    plot_out = plot_output(args.plot_path) if args.plot_path is not None else None
    try:
        docs = [load_timing(path, "baseline" if i == 0 and args.gate else "file") for i, path in
                enumerate(args.files)]
    except DocumentError as e:
        raise CliError(str(e)) from None
    alpha = DEFAULT_ALPHA if args.alpha is None else args.alpha
    floor_us = args.floor_us  # None: a tenth of a jiffy at the baseline's HZ
    threshold = args.threshold if args.threshold is not None else GATE_THRESHOLD if args.gate else DEFAULT_THRESHOLD
    try:
        if args.gate:
            result = decide(docs[0], docs[1], threshold=threshold, alpha=alpha, floor_us=floor_us, seed=args.seed)
            assert result.comparison is not None
            comparison = result.comparison
        else:
            comparison = compare_documents(docs, Settings(alpha=alpha, threshold=threshold, floor_us=floor_us,
                                                          seed=args.seed))
    except NotComparable as e:
        raise CliError(str(e)) from None
    if plot_out is not None:
        from minivmm.compare.plot import plot
        plot_out.write_with(lambda f: plot(comparison, f))
    def write() -> None:
        from minivmm.safetext import safe
        if args.as_json:
            import json
            json.dump(to_json(comparison, result.to_json() if args.gate else None), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            render(comparison, sys.stdout)
            if args.gate:
                sys.stdout.write(f"gate: {safe(result.text)}\n")
            if plot_out is not None and plot_out.stream is None:
                sys.stdout.write(f"plot: {safe(args.plot_path)}\n")
    if not args.gate:
        write()
        return int(ExitCode.OK)
    from minivmm.cli.gate_opts import write_output
    return write_output(gate_exit_code(result.outcome.value), write)


def plot_output(path: str) -> Output:
    """The ``--plot`` destination, checked before any work (a PNG file name we may write, or a stream),
    and matplotlib, which drawing it needs (``timing`` and ``compare`` alike)."""
    from minivmm.files import Output
    from minivmm.timing.plot import PlotUnavailable, check_available
    out = Output(path, "--plot", suffix=".png")
    try:
        check_available()
    except PlotUnavailable as e:
        raise CliError(str(e)) from None
    return out


COMMAND = Command("compare", compare, HELP,
                  "compare timing --json files: which steps changed significantly")
