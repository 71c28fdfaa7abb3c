"""``minivmm model``: predicted ioctl latencies of a VM set-up sequence under the kernel variants."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from minivmm.cli.errors import CliError


def _fmt_us(us: float) -> str:
    """12.3 us, 4.56 ms: the unit a person reads at a glance."""
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} us"


def _sequence_help() -> str:
    from kernel_model.sequences import SEQUENCES
    return "; ".join(f"{name}: {seq.description}" for name, seq in SEQUENCES.items())


def render_predictions(predictions: list[Any], out) -> None:
    """Human output: one strace-style block per variant (p50), then percentiles side by side."""
    first = predictions[0]
    w = out.write
    how = ("phase-interpolated" if _deterministic(first.sequence) else "Monte Carlo")
    w(f"sequence {first.sequence.name} at HZ={first.hz} on {first.platform}: {first.samples} samples "
      f"per variant ({how}), tick phase uniform\n")
    for pred in predictions:
        w(f"\n# variant {pred.variant}: p50 of each ioctl, strace -T style\n")
        for sp in pred.steps:
            w(sp.step.strace(sp.stats()["p50"] / 1e6) + "\n")
    labels = [sp.step.label for sp in first.steps]
    cells = [[f"{_fmt_us(st['p50'])} [{_fmt_us(st['p10'])} - {_fmt_us(st['p90'])}]"
              for st in (p.steps[i].stats() for p in predictions)] for i in range(len(labels))]
    width = max(len(label) for label in labels + ["step"])
    col = max([len(c) for row in cells for c in row] + [len(p.variant) for p in predictions]
              + [len("p50 [p10 - p90]")]) + 3
    w("\n" + "step".ljust(width) + "".join(p.variant.rjust(col) for p in predictions) + "\n")
    w(" " * width + "".join("p50 [p10 - p90]".rjust(col) for _ in predictions) + "\n")
    for label, row in zip(labels, cells):
        w(label.ljust(width) + "".join(c.rjust(col) for c in row) + "\n")
    for p in predictions:
        for v in p.violations[:3]:
            w(f"violation under {p.variant}: {v.kind.value}: {v.message}\n")


def _deterministic(sequence: Any) -> bool:
    from kernel_model.predict import phase_deterministic
    return phase_deterministic(sequence)


def model(
    sequence: str = typer.Option("firecracker", "--sequence", "-s",
                                 help="A named sequence or a sequence file (see kernel_model/sequences.py "
                                      "for the format). Named: firecracker, registrations-first, "
                                      "arm64-order, late-registration."),
    variant: str = typer.Option("all", "--variant", "-v",
                                help="sync, call_srcu, created_vcpus, call_srcu_expedited, "
                                     "call_srcu_no_barrier, or all (the first four side by side)."),
    hz: int = typer.Option(100, "--hz", min=1, max=10000, help="CONFIG_HZ of the modelled kernel."),
    platform: str = typer.Option("vmx", "--platform", "-p", help="vmx, svm, pvm or arm64."),
    samples: int = typer.Option(1000, "--samples", "-n", min=1, max=1_000_000,
                                help="Samples of the tick phase per variant."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same numbers."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: per variant and step, "
                                                       "p10/p50/p90 (and min/max) in microseconds."),
) -> int:
    """Predict each ioctl's latency in a VM set-up sequence with the kernel model (no /dev/kvm needed).

    Shows, per kernel variant, the median duration of each ioctl as strace -T prints it, then the
    p10/p50/p90 side by side. The spread comes from where in a jiffy the sequence starts.
    """
    from kernel_model.platforms import get_platform
    from kernel_model.predict import predict
    from kernel_model.sequences import load_sequence
    from kernel_model.variants import MAIN_VARIANTS, get_variant

    try:
        seq = load_sequence(sequence)
        get_platform(platform)
        names = list(MAIN_VARIANTS) if variant == "all" else [get_variant(variant).name]
    except ValueError as e:
        raise CliError(str(e)) from None
    predictions = [predict(seq, name, hz, platform, samples=samples, seed=seed) for name in names]
    if as_json:
        from minivmm.schemas import stamp
        doc = stamp("model", {"sequence": seq.name, "hz": hz, "platform": platform, "samples": samples,
                              "seed": seed, "variants": {p.variant: p.to_json() for p in predictions}})
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_predictions(predictions, sys.stdout)
    return 0


def register(app: typer.Typer) -> None:
    """Add the ``model`` command to ``app``."""
    app.command()(model)
