"""``minivmm timing``'s ``--baseline``, ``--threshold`` and ``--format``: the regression gate and the
output formats, kept here so ``timing_cmd`` only calls in at three points (before measuring, on a
measurement failure, output).

The gate's contract, for ``git bisect run``: exit 0 when no step regressed significantly past the
threshold, 1 when one did (named), 125 when the measurement was unusable (too few repetitions, too
noisy to decide, /dev/kvm missing, the kernel refusing a step): bisect's "skip", since that commit can
be neither good nor bad. A baseline that cannot be read, or that times another sequence, is bad input
(exit 2) and is checked before anything is measured.

1 means only "a step regressed" (:func:`guarded`): under a gate, every error is 2 (bad input) or 125
(unusable), never 1, whatever raised it, a bug included; and the decision is the exit status even
when the reader of the output has gone (``compare --gate | head``: :func:`write_output`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from minivmm.cli.errors import CliError, ExitCode, gate_exit_code

if TYPE_CHECKING:
    from collections.abc import Callable

    from minivmm.compare.documents import TimingDocument


@dataclass
class Gate:
    """A loaded baseline and the threshold to hold the run to."""

    baseline: TimingDocument
    threshold: float


def prepare(args: SimpleNamespace) -> Gate | None:
    """Check the format and gate options before any work; load the baseline (exit 2 if unusable).

    Sets ``args.out_format`` (``--json`` is ``--format json``) and, with a baseline and
    ``--sequence auto``, ``args.sequence`` to the baseline's sequence."""
    if args.as_json and args.out_format not in (None, "json"):
        raise CliError(f"--json cannot be used with --format {args.out_format}")
    args.out_format = "json" if args.as_json else args.out_format or "text"
    if args.out_format == "openmetrics":
        check_metrics_available()
    if args.baseline is None:
        if args.threshold is not None:
            raise CliError("--threshold needs --baseline (the run to compare with)")
        return None
    from minivmm.compare.documents import DocumentError, load_timing
    from minivmm.compare.gate import DEFAULT_THRESHOLD
    try:
        base = load_timing(args.baseline, "--baseline")
    except DocumentError as e:
        raise CliError(str(e)) from None
    if args.sequence == "auto":
        args.sequence = base.sequence
    elif args.sequence != base.sequence:
        raise CliError(f"--baseline {args.baseline} times sequence {base.sequence!r}, this run would time "
                       f"{args.sequence!r}: not comparable (drop --sequence to use the baseline's)")
    return Gate(base, DEFAULT_THRESHOLD if args.threshold is None else args.threshold)


def unusable(gate: Gate | None, error: CliError) -> CliError:
    """Under a gate, a measurement that could not be made (/dev/kvm missing, a step the kernel refused)
    is exit 125: the commit is neither good nor bad. Bad input (exit 2) stays bad input."""
    if gate is None or error.code == ExitCode.BAD_INPUT:
        return error
    return CliError(f"{error} (the measurement is unusable: gate exit 125)", ExitCode.UNUSABLE)


def host_unreadable(gate: Gate | None, error: CliError, kvm_error: str | None = None) -> CliError:
    """A fact about the host that could not be read (its KVM platform, its CONFIG_HZ): bad input without
    a gate (pass --platform or --hz), but under a gate the kernel being tested is the likely cause (no
    KVM module loaded, no config exposed), so exit 125: a bisect skips that kernel rather than calling
    it bad. ``kvm_error``, when /dev/kvm is missing too, is the reason given."""
    if gate is None:
        return error
    return CliError(f"{kvm_error or error} (the measurement is unusable: gate exit 125)", ExitCode.UNUSABLE)


def check_metrics_available() -> None:
    """Refuse ``--format openmetrics`` before any work when prometheus_client is not installed."""
    from minivmm.compare.openmetrics import MetricsUnavailable, check_available
    try:
        check_available()
    except MetricsUnavailable as e:
        raise CliError(str(e)) from None


def guarded(under_gate: bool, body: Callable[[], int]) -> int:
    """Run a command's ``body`` under the gate's exit-code contract when ``under_gate``.

    A CliError that would exit 1 (the host refused a step, say) becomes 125; any exception that is not
    already one of the command line's own errors (bad input, a failed write, a resource that ran out)
    is a bug, and becomes one line and 125 instead of a traceback and 1: a bisect skips the commit
    rather than calling it bad."""
    if not under_gate:
        return body()
    from minivmm.cli.app import ReaderLeft
    from minivmm.cli.errors import resource_error
    from minivmm.files import FileRefused, WriteFailed
    try:
        return body()
    except CliError as e:
        if e.code == ExitCode.GUEST_FAILED:
            raise CliError(f"{e} (the measurement is unusable: gate exit 125)", ExitCode.UNUSABLE) from None
        raise
    except (FileRefused, WriteFailed, BrokenPipeError, ReaderLeft):
        raise
    except Exception as e:
        if resource_error(e) is not None:
            raise
        from minivmm.safetext import safe
        raise CliError(f"internal error: {type(e).__name__}: {safe(e)} (a bug in minivmm; the measurement is "
                       "unusable: gate exit 125)", ExitCode.UNUSABLE) from None


def write_output(code: int, write: Callable[[], None]) -> int:
    """Write the output with ``write`` and return ``code``, the decision, even if the reader of standard
    output has gone (EPIPE, which stdout raises as :class:`minivmm.cli.app.ReaderLeft`): the exit status of
    ``compare --gate | head`` is the gate's."""
    from minivmm.cli.app import ReaderLeft, silence_stdout
    try:
        write()
        sys.stdout.flush()
    except (BrokenPipeError, ReaderLeft):
        silence_stdout()
    return code


def emit(args: SimpleNamespace, gate: Gate | None, doc: dict[str, Any], render_text: Callable[[], None]) -> int:
    """Decide the gate (if any), write the output in ``args.out_format``, return the exit code."""
    code = int(ExitCode.OK)
    result = None
    if gate is not None:
        from minivmm.compare.ab import NotComparable
        from minivmm.compare.documents import parse_timing
        from minivmm.compare.gate import decide
        try:
            result = decide(gate.baseline, parse_timing(doc, "this run"), threshold=gate.threshold,
                            seed=args.seed)
        except NotComparable as e:  # same name, different steps (a sequence file edited since)
            raise CliError(f"--baseline: {e}") from None
        doc["gate"] = result.to_json()
        code = gate_exit_code(result.outcome.value)

    def write() -> None:
        from minivmm.safetext import safe
        out = sys.stdout
        if args.out_format == "json":
            import json
            json.dump(doc, out, indent=2)
            out.write("\n")
        elif args.out_format == "openmetrics":
            from minivmm.compare.openmetrics import timing_openmetrics
            out.write(timing_openmetrics(doc))
        else:
            render_text()
            if result is not None:
                out.write(f"\ngate against {safe(result.baseline)} (threshold {result.threshold:.0%}, floor "
                          f"{result.floor_us:g} us, alpha {result.alpha:g}):\n")
                for w in result.warnings:
                    out.write(f"warning: {safe(w)}\n")
                out.write(f"gate: {safe(result.text)}\n")
        if result is not None and args.out_format != "text":
            try:
                for w in result.warnings:
                    print(f"minivmm: warning: {safe(w)}", file=sys.stderr)
                print(f"minivmm: gate: {safe(result.text)}", file=sys.stderr)
            except OSError:
                pass  # stderr gone: the exit status still says it
    return write_output(code, write)
