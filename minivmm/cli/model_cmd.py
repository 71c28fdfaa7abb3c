"""``minivmm model``: predicted ioctl latencies of a VM set-up sequence under the kernel variants."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Annotated

import typer

from minivmm.cli.app import Command, run_command
from minivmm.cli.errors import CliError
from minivmm.cli.options import (
    Json,
    Profile,
    ReportTo,
    Samples,
    Seed,
    choice,
    complete_sequences,
    complete_variants,
    hz_option,
    platform_option,
    sequence_option,
)
from minivmm.durations import fmt_us

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time); mypy knows the name
if TYPE_CHECKING:
    from typing import Any, TextIO

    from minivmm.host import ModelledKernel


def render_predictions(predictions: list[Any], out: TextIO, profile: str | None = None,
                       kernel: ModelledKernel | None = None) -> None:
    """Human output: one strace-style block per variant (p50), then percentiles side by side; ``kernel``:
    where the HZ and platform came from, said under the first line."""
    first = predictions[0]
    w = out.write
    how = ("phase-interpolated" if _deterministic(first.sequence) and profile is None else "Monte Carlo")
    w(f"sequence {first.sequence.name} at HZ={first.hz} on {first.platform}: {first.samples} samples "
      f"per variant ({how}), tick phase uniform\n")
    if kernel is not None:
        w(f"HZ={kernel.hz} ({kernel.hz_source}), platform {kernel.platform} ({kernel.platform_source})\n")
    if profile is not None:
        w(f"host profile {profile}: timer wake-up latency drawn from its measured distribution\n")
    for pred in predictions:
        w(f"\n# variant {pred.variant}: p50 of each ioctl, strace -T style\n")
        for sp in pred.steps:
            w(sp.step.strace(sp.stats()["p50"] / 1e6) + "\n")
    labels = [sp.step.label for sp in first.steps]
    cells = [[f"{fmt_us(st['p50'])} [{fmt_us(st['p10'])} - {fmt_us(st['p90'])}]"
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
    if profile is not None:
        for line in published_odds(predictions):
            w(line + "\n")


def published_odds(predictions: list[Any]) -> list[str]:
    """How often the model (with a host profile) reaches each published stall of the same step, HZ and
    architecture: e.g. how likely a 25.2 ms first KVM_CREATE_VCPU is at HZ=100 on a host like this."""
    from kernel_model.platforms import get_platform
    from kernel_model.published import FIGURES
    out = []
    for pred in predictions:
        arch = get_platform(pred.platform).arch.value
        for sp in pred.steps:
            for f in FIGURES:
                label = sp.step.label.split(", slot")[0]
                if (f.kind == "stalled" and f.what == label and f.platform == arch and f.after_s
                        and f.hz in (pred.hz, None) and pred.variant == "call_srcu"):
                    hits = sum(d >= f.after_s * 1e9 for d in sp.durations)
                    out.append(f"with this profile, {sp.step.label} >= the published {f.after_s:.6f} s "
                               f"({f.hz and f'HZ={f.hz}' or 'HZ not stated'}): {hits}/{len(sp.durations)} "
                               f"samples ({hits / len(sp.durations):.2%}) under call_srcu")
    return out


def render_explanations(explanations: list[Any], out: TextIO) -> None:
    """Per variant: each step that waited for a grace period (which one, started by which step), each
    step the model does not model, and the whole set-up time."""
    from kernel_model.sequences import step_name
    w = out.write
    for ex in explanations:
        st = ex.setup
        w(f"\n# variant {ex.variant}: why each step took its time; whole set-up {fmt_us(st['p50'])} "
          f"[{fmt_us(st['p10'])} - {fmt_us(st['p90'])}] (p50 [p10 - p90])\n")
        shown = [s for s in ex.steps if s.waited_for_gp or not s.modelled]
        for s in shown:
            w(f"{step_name(s.index, s.label)}: p50 {fmt_us(s.p50_us)}: {s.describe()}\n")
        if not shown:
            w("no step waited for a grace period\n")


def _deterministic(sequence: Any) -> bool:
    from kernel_model.predict import phase_deterministic
    return phase_deterministic(sequence)


HELP = ("Predict each ioctl's latency in a VM set-up sequence with the kernel model (no /dev/kvm needed). Shows, "
        "per kernel variant, the median duration of each ioctl as strace -T prints it, then the p10/p50/p90 side "
        "by side. The spread comes from where in a jiffy the sequence starts.")


#: The kernel of the published report (Nikita Kalyazin, Feb 13 2026: x86, HZ=100): model's last default.
PUBLISHED_KERNEL = (100, "vmx")
#: model's default HZ and platform: a sequence file from `trace --save-sequence` says which host it was
#: recorded on, and is replayed there; otherwise the published report's kernel.
RECORDED = f"the recording host's, if a sequence file says; else {PUBLISHED_KERNEL[0]} and {PUBLISHED_KERNEL[1]}"


def variant_name(text: str) -> str:
    """A kernel variant the model knows (kernel_model.variants.VARIANTS, the one list), or all."""
    from kernel_model.variants import VARIANTS
    return choice((*VARIANTS, "all"), "a kernel variant")(text)


def _variant_help() -> str:
    from kernel_model.variants import MAIN_VARIANTS, VARIANTS
    return (f"{', '.join(VARIANTS)}, or all (the first {len(MAIN_VARIANTS)} side by side: "
            f"{', '.join(MAIN_VARIANTS)})")


def model(
    sequence: Annotated[str, sequence_option("firecracker")] = "firecracker",
    variant: Annotated[str, typer.Option("-v", "--variant", metavar="VARIANT", parser=variant_name,
                                         autocompletion=complete_variants, help=_variant_help())] = "all",
    hz: Annotated[int | None, hz_option(RECORDED)] = None,
    platform: Annotated[str | None, platform_option(RECORDED)] = None,
    samples: Samples = 1000,
    seed: Seed = 0,
    as_json: Json = False,
    profile: Profile = None,
    list_sequences: Annotated[bool, typer.Option(
        "--list-sequences", help="list the named sequences with what each shows, and exit")] = False,
    show_sequence: Annotated[str | None, typer.Option(
        "--show-sequence", metavar="NAME|FILE", autocompletion=complete_sequences,
        help="print a sequence in the sequence file format (a start for one of your own), and exit")] = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="also say, per variant, which grace period each step waited for and which earlier "
                          "step started it (from the model's own state), which steps are not modelled, and the "
                          "whole set-up time")] = False,
    output: ReportTo = None,
) -> int:
    """Predict and print (see HELP)."""
    args = SimpleNamespace(**locals())  # locals() here: exactly the parameters
    return run_command(run, args, output=output)


def run(args: SimpleNamespace) -> int:
    """Predict and print."""
    import json

    from kernel_model.platforms import get_platform
    from kernel_model.predict import predict
    from kernel_model.variants import MAIN_VARIANTS, get_variant
    from minivmm.cli import seqinput
    from minivmm.host import KernelSource, modelled_kernel, recorded_host

    if args.list_sequences:
        import textwrap

        from kernel_model.sequences import SEQUENCES
        for name, named in SEQUENCES.items():
            sys.stdout.write(f"{name}\n" + textwrap.fill(named.description, 78, initial_indent="    ",
                                                         subsequent_indent="    ") + "\n")
        return 0
    if args.show_sequence is not None:
        sys.stdout.write(seqinput.to_file_text(seqinput.load(args.show_sequence)))
        return 0
    seq = seqinput.load(args.sequence)
    # A file from `minivmm trace --save-sequence` says which host it was recorded on: replayed there.
    published = "the published report's kernel"
    kernel = modelled_kernel(args.hz, args.platform, recorded_host(seq.hz, seq.platform),
                             KernelSource(PUBLISHED_KERNEL[0], published, PUBLISHED_KERNEL[1], published))
    assert kernel.hz is not None and kernel.platform is not None  # the published kernel has both
    args.hz, args.platform = kernel.hz, kernel.platform
    try:
        get_platform(args.platform)
        names = list(MAIN_VARIANTS) if args.variant == "all" else [get_variant(args.variant).name]
    except ValueError as e:
        raise CliError(str(e)) from None
    seqinput.refuse_what_the_kernel_refuses(seq, args.platform)
    costs = seqinput.profile_costs(args.profile, args.hz, args.platform)
    explanations: list[Any] = []
    if args.explain:
        from kernel_model.explain import explain_variant
        explanations = [explain_variant(seq, name, args.hz, args.platform, samples=args.samples, seed=args.seed,
                                        costs=costs)
                        for name in names]
        predictions = [ex.prediction for ex in explanations]
    else:
        predictions = [predict(seq, name, args.hz, args.platform, samples=args.samples, seed=args.seed,
                               costs=costs)
                       for name in names]
    if args.as_json:
        variants = {p.variant: p.to_json() for p in predictions}
        for ex in explanations:
            variants[ex.variant].update(setup_us=ex.setup, explanation=[s.to_json() for s in ex.steps])
        from minivmm.schemas import stamp
        doc = stamp("model", {"sequence": seq.name, "hz": args.hz, "hz_source": kernel.hz_source,
                              "platform": args.platform, "platform_source": kernel.platform_source,
                              "samples": args.samples, "seed": args.seed, "profile": args.profile,
                              "variants": variants})
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_predictions(predictions, sys.stdout, args.profile, kernel)
        render_explanations(explanations, sys.stdout)
    return 0


COMMAND = Command("model", model, HELP,
                  "predict each set-up ioctl's latency with the kernel model (no /dev/kvm needed)")
