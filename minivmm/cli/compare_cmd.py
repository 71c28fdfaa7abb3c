"""``minivmm compare``: timing documents of one sequence side by side, which steps changed significantly,
and (``--gate``) the regression gate's decision on a recorded current run."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from minivmm.cli.errors import CliError, ExitCode
from minivmm.cli.options import float_range

if TYPE_CHECKING:
    from minivmm.files import Output


def percentage(text: str) -> float:
    """argparse type: ``20%`` -> 0.2 (the one parser, :func:`minivmm.compare.gate.parse_threshold`)."""
    from minivmm.compare.gate import parse_threshold
    try:
        return parse_threshold(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


percentage.__name__ = "percentage"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``compare`` command."""
    p = subparsers.add_parser(
        "compare", help="compare timing --json files: which steps changed significantly",
        description="Compare `minivmm timing --json` files of the same sequence: the first is the baseline "
                    "(A), each other file is compared with it. Per step: p10/p50/p90 of each file; per "
                    "compared file: the change of the median with its bootstrap confidence interval, Cliff's "
                    "delta (effect size) and the Mann-Whitney p-value after Holm's adjustment over all the "
                    "steps. A step changed significantly when p < --alpha and its median moved by at least "
                    "--threshold of A's median and at least --floor-us. Files of different sequences are "
                    "refused; a different HZ, platform or kernel is warned about. Exits 0 once compared "
                    "(whatever changed); with --gate, exits 0 (no regression), 1 (a step regressed) or 125 "
                    "(unusable: too few repetitions or too noisy), as `timing --baseline` does.",
        example="minivmm compare before.json after.json")
    p.add_argument("files", nargs="+", metavar="FILE.json",
                   help="timing --json documents: the baseline first")
    p.add_argument("--json", dest="as_json", action="store_true",
                   help="one JSON object (minivmm/schemas/compare.schema.json)")
    p.add_argument("--plot", dest="plot_path", default=None, metavar="FILE.png",
                   help="draw the changed steps' distributions overlaid, with jiffy gridlines (needs "
                        "matplotlib)")
    p.add_argument("--alpha", type=float_range(1e-9, 0.5), default=None, metavar="P",
                   help="family-wise significance level, after Holm's adjustment (default: 0.01)")
    p.add_argument("--threshold", type=percentage, default=None, metavar="N%",
                   help="minimum change of the median that counts, relative to the baseline's "
                        "(default: 10%%; with --gate 20%%)")
    p.add_argument("--floor-us", type=float_range(0.0), default=None, metavar="US",
                   help="minimum change of the median that counts, in microseconds (default: a tenth of "
                        "a jiffy at the baseline's HZ, 400 at HZ=250; on a quiet host 20 catches "
                        "microsecond-scale changes)")
    p.add_argument("--seed", type=int, default=0, metavar="SEED", help="seed of the bootstrap (default: 0)")
    p.add_argument("--gate", action="store_true",
                   help="decide as `timing --baseline` does, on two recorded files BASELINE CURRENT: "
                        "exit 0, 1 or 125")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load, compare, print; with ``--gate``, map the decision to its exit code."""
    from minivmm.compare.ab import (DEFAULT_ALPHA, DEFAULT_THRESHOLD, NotComparable, Settings,
                                    compare_documents, render, to_json)
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
    if args.as_json:
        import json
        json.dump(to_json(comparison, result.to_json() if args.gate else None), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(comparison, sys.stdout)
        if args.gate:
            sys.stdout.write(f"gate: {result.text}\n")
        if plot_out is not None and plot_out.stream is None:
            sys.stdout.write(f"plot: {args.plot_path}\n")
    return gate_exit_code(result.outcome.value) if args.gate else int(ExitCode.OK)


def gate_exit_code(outcome: str) -> int:
    """The gate's outcome as the process exit code: pass 0, regressed 1, unusable 125 (bisect's skip)."""
    return int({"pass": ExitCode.OK, "regressed": ExitCode.GUEST_FAILED, "unusable": ExitCode.UNUSABLE}[outcome])


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
