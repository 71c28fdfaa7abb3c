"""A/B comparison of timing documents: the same sequence's steps side by side, the change of each step's
trimmed mean with a permutation test, an effect size and a bootstrap interval, and which steps changed
significantly.

The first document is the baseline (A); every other one is compared with it. Each step is summed up by
its 10% trimmed mean (:func:`kernel_model.stats.trimmed_mean`), not its median: a step that waits for
a grace period is bimodal by tick phase (modes a jiffy apart), and its median jumps a whole jiffy when
a few percent of the samples change mode, which two runs of the same kernel minutes apart do. The
trimmed mean moves by the share that moved. A step *changed significantly* when both hold:

- the permutation test of the trimmed means' difference (two-sided; exact, whatever the shape of the
  distributions, under "both runs are draws from one distribution") rejects at family-wise level
  ``alpha`` after Holm's adjustment over every (step, file) tested: a sequence of 11 steps would
  otherwise show a false change in one run of two at alpha 0.05;
- the trimmed mean moved by at least ``threshold`` of the baseline's *and* by at least ``floor_us``
  (by default a tenth of a jiffy at the baseline's HZ: 400 µs at HZ=250, 100 µs at HZ=1000). Two runs
  minutes apart on a busy host are not draws from one distribution: the host's load moves a step by
  tens of µs, and a grace-period wait's tick-mode shares by several points, which no p-value accounts
  for. The regressions this hunts are tick-sized (a grace period the ioctl now waits for is 1-2
  jiffies); on a quiet host, ``--floor-us 20`` catches µs-scale changes of the fixed-cost ioctls too. A
  change the test confirms but the floor or threshold excludes is shown, marked ``below the minimum``,
  not hidden.

``scripts/aa_gate.py`` measures how often this rule calls two runs of one kernel different (the false
alarm rate) and how often it catches an extra grace-period wait (the power).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from kernel_model.sequences import step_number
from kernel_model.stats import percentile, trimmed_mean
from minivmm.compare.documents import StepSamples, TimingDocument
from minivmm.compare.stats import bootstrap_diff, cliffs_delta, effect_label, holm, permutation_test
from minivmm.durations import fmt_delta
from minivmm.safetext import safe
from minivmm.timing.pressure import Load

#: Fewer repetitions than this per file cannot show a change past the floor with any confidence (a
#: permutation test of 5 against 5 cannot go below p = 0.004): the comparison warns and the gate reports
#: the measurement unusable.
MIN_SAMPLES = 10
#: The share trimmed from each end of a step's samples before averaging (see the module docstring).
TRIM = 0.1
#: Defaults of ``minivmm compare`` (the gate passes its own threshold).
DEFAULT_ALPHA = 0.01
DEFAULT_THRESHOLD = 0.10
#: The default minimum change of a step's trimmed mean, as a share of a jiffy at the baseline's HZ (see above).
DEFAULT_FLOOR_JIFFIES = 0.1


class NotComparable(ValueError):
    """The documents do not time the same sequence; the message is one line."""


@dataclass(frozen=True)
class Settings:
    """How a comparison decides: family-wise alpha, minimum relative and absolute change, bootstrap
    and permutations (``permutations`` None: enough to resolve alpha over the number of tests)."""

    alpha: float = DEFAULT_ALPHA
    threshold: float = DEFAULT_THRESHOLD
    floor_us: float | None = None  # None: DEFAULT_FLOOR_JIFFIES of a jiffy at the baseline's HZ
    confidence: float = 0.95
    resamples: int = 1000
    seed: int = 0
    permutations: int | None = None


@dataclass
class StepChange:
    """One step of one file against the baseline: the change of its trimmed mean (µs), relative
    (``change``, 0.25 = +25%), its interval, Cliff's delta and the permutation test."""

    step: StepSamples
    file: int
    delta_us: float
    change: float | None
    ci_low_us: float
    ci_high_us: float
    cliffs_delta: float
    p_value: float
    p_adjusted: float = 1.0
    needed_us: float = 0.0
    significant: bool = False

    @property
    def direction(self) -> str:
        """``slower``, ``faster`` or ``unchanged`` (not significant)."""
        if not self.significant:
            return "unchanged"
        return "slower" if self.delta_us > 0 else "faster"

    def describe(self, paths: list[str]) -> str:
        """``#8 KVM_SET_USER_MEMORY_REGION, slot 0: +8.02 ms (+140%) slower in B.json``."""
        pct = f" ({self.change * 100:+.0f}%)" if self.change is not None else ""
        where = f" in {paths[self.file]}" if len(paths) > 2 else ""
        return f"{self.step.name}: {fmt_delta(self.delta_us)}{pct} {self.direction}{where}"


@dataclass
class Comparison:
    """The result of :func:`compare_documents`."""

    docs: list[TimingDocument]
    settings: Settings
    warnings: list[str]
    quantiles_us: list[list[dict[str, float]]]  # [step][file] -> p10_us, p50_us, p90_us, tmean_us
    changes: list[StepChange] = field(default_factory=list)
    default_floor: bool = False

    @property
    def changed(self) -> list[StepChange]:
        """The significant changes, in step order."""
        return [c for c in self.changes if c.significant]

    @property
    def summary(self) -> str:
        """One line: ``no significant change`` or the steps that changed."""
        if not self.changed:
            return "no significant change"
        paths = [d.path for d in self.docs]
        return "changed significantly: " + "; ".join(c.describe(paths) for c in self.changed)


def check_comparable(docs: list[TimingDocument]) -> None:
    """Raise :class:`NotComparable` unless every document times the same sequence, step for step."""
    base = docs[0]
    for d in docs[1:]:
        if d.sequence != base.sequence:
            raise NotComparable(f"not comparable: {base.path} times sequence {base.sequence!r}, {d.path} "
                                f"times {d.sequence!r}")
        if d.shape != base.shape:
            if len(d.shape) != len(base.shape):
                raise NotComparable(f"not comparable: sequence {base.sequence!r} has {len(base.shape)} steps in "
                                    f"{base.path} and {len(d.shape)} in {d.path}")
            i = next(k for k, (x, y) in enumerate(zip(base.shape, d.shape)) if x != y)
            raise NotComparable(f"not comparable: step #{step_number(i)} of {base.sequence!r} is "
                                f"{base.shape[i][1]!r} in "
                                f"{base.path} but {d.shape[i][1]!r} in {d.path}")


#: The op of the VM's teardown step, which timing documents written before minivmm timed it lack.
TEARDOWN_OP = "destroy_vm"


def without_unshared_teardown(docs: list[TimingDocument]) -> tuple[list[TimingDocument], list[str]]:
    """When some documents end with the teardown step and the others do not (those were written before
    ``minivmm timing`` timed it), the steps all of them have, and one line saying so; else the
    documents as they are."""
    ends = [bool(d.steps) and d.steps[-1].op == TEARDOWN_OP for d in docs]
    if all(ends) or not any(ends):
        return docs, []
    with_it = [d.path for d, e in zip(docs, ends) if e]
    without = [d.path for d, e in zip(docs, ends) if not e]
    note = (f"the teardown step (close of the VM fd) is in {', '.join(with_it)} but not in {', '.join(without)} "
            "(a document written before minivmm timed it): compared without it")
    return [replace(d, steps=d.steps[:-1]) if e else d for d, e in zip(docs, ends)], [note]


def host_warnings(docs: list[TimingDocument]) -> list[str]:
    """What differs between the hosts (or kernels) beyond what is being compared, one line each."""
    base = docs[0]
    out = []
    for d in docs[1:]:
        if d.hz != base.hz:
            out.append(f"HZ differs: {base.path} HZ={base.hz}, {d.path} HZ={d.hz} (a jiffy is "
                       f"{1000 / base.hz:g} ms vs {1000 / d.hz:g} ms: tick-bound steps differ for that reason alone)")
        if d.platform != base.platform:
            out.append(f"platform differs: {base.path} {base.platform}, {d.path} {d.platform} (different KVM "
                       "backends: fixed costs differ)")
        if d.kernel != base.kernel:
            out.append(f"kernel differs: {base.path} {base.kernel}, {d.path} {d.kernel}")
        jit_a, jit_b = base.data.get("host", {}).get("jitter"), d.data.get("host", {}).get("jitter")
        if jit_a is not None and jit_b is not None and jit_a != jit_b:
            out.append(f"jitter differs: {base.path} jitter={jit_a}, {d.path} jitter={jit_b} (back-to-back runs "
                       "lock to the tick and hide the spread)")
    for d in docs:
        busy = document_load(d).warning()
        if busy:
            out.append(f"{d.path}: {busy}")
        n = min(len(s.samples_ns) for s in d.steps)
        if n < MIN_SAMPLES:
            out.append(f"{d.path} has {n} repetitions: fewer than {MIN_SAMPLES}, the tests cannot be trusted")
    return out


def document_load(d: TimingDocument) -> Load:
    """The load a timing document says its run was measured under."""
    return Load(d.cpu_pressure_pct, d.load_average)


def trimmed(values: Sequence[float]) -> float:
    """The trimmed mean every comparison uses (:data:`TRIM` from each end)."""
    return trimmed_mean(values, TRIM)


def compare_documents(docs: list[TimingDocument], settings: Settings = Settings()) -> Comparison:
    """Compare every document after the first with the first, step by step (see the module docstring)."""
    if len(docs) < 2:
        raise ValueError("compare needs at least two documents")
    docs, notes = without_unshared_teardown(docs)
    check_comparable(docs)
    default_floor = settings.floor_us is None
    if settings.floor_us is None:
        settings = replace(settings, floor_us=DEFAULT_FLOOR_JIFFIES * jiffy_us(docs[0].hz))
    floor_us = settings.floor_us
    assert floor_us is not None
    quantiles: list[list[dict[str, float]]] = []
    for i in range(len(docs[0].steps)):
        row = []
        for d in docs:
            s = d.steps[i].samples_ns
            row.append({"p10_us": percentile(s, 10) / 1000, "p50_us": percentile(s, 50) / 1000,
                        "p90_us": percentile(s, 90) / 1000, "tmean_us": trimmed(s) / 1000})
        quantiles.append(row)
    tests = (len(docs) - 1) * len(docs[0].steps)
    # Enough relabellings to resolve alpha after Holm's adjustment over every test, three times over (any
    # number keeps the test's level: (1 + extreme) / (1 + permutations) is a valid p-value; more only
    # sharpen it near alpha).
    full = settings.permutations or min(100_000, math.ceil(3 * tests / settings.alpha))
    changes = []
    for f in range(1, len(docs)):
        for i, base_step in enumerate(docs[0].steps):
            a, b = base_step.samples_ns, docs[f].steps[i].samples_ns
            ta, tb = trimmed(a), trimmed(b)
            needed = max(settings.threshold * ta / 1000, floor_us)
            seed = settings.seed + 1000 * f + i
            lo, hi = bootstrap_diff(a, b, trimmed, settings.confidence, settings.resamples, seed)
            changes.append(StepChange(
                step=base_step, file=f, delta_us=(tb - ta) / 1000, change=(tb - ta) / ta if ta > 0 else None,
                ci_low_us=lo / 1000, ci_high_us=hi / 1000, cliffs_delta=cliffs_delta(a, b),
                p_value=permutation_test(a, b, trimmed, full, seed), needed_us=needed))
    for c, p_adj in zip(changes, holm([c.p_value for c in changes])):
        c.p_adjusted = p_adj
        c.significant = p_adj < settings.alpha and abs(c.delta_us) >= c.needed_us
    return Comparison(docs, settings, notes + host_warnings(docs), quantiles, changes, default_floor)


def _qcell(q: dict[str, float]) -> str:
    """``226 / 260 / 310 us``: p10 / p50 / p90 in one unit, the unit of the p90."""
    scale, unit = (1000.0, "ms") if q["p90_us"] >= 1000 else (1.0, "us")
    digits = 2 if unit == "ms" or q["p90_us"] < 10 else 0 if q["p90_us"] >= 100 else 1
    return " / ".join(f"{q[k] / scale:.{digits}f}" for k in ("p10_us", "p50_us", "p90_us")) + f" {unit}"


def render(c: Comparison, out: TextIO) -> None:
    """The human comparison: per step the quantiles of each file, then per compared file the change of
    the trimmed mean, its interval, Cliff's delta and the adjusted p-value; warnings; the summary line.
    Every string from a document or the command line goes through :func:`minivmm.safetext.safe`."""
    w = out.write
    docs = c.docs
    s = c.settings
    names = [chr(ord("A") + i) if i < 26 else str(i) for i in range(len(docs))]
    w(f"minivmm compare: sequence {safe(docs[0].sequence)}, {len(docs[0].steps)} steps\n")
    for name, d in zip(names, docs):
        role = "baseline" if d is docs[0] else "compared with A"
        w(f"  {name} = {safe(d.path)}: {d.repetitions} repetitions, kernel {safe(d.kernel)}, HZ={d.hz}, "
          f"{safe(d.platform)} ({role}); load: {document_load(d).describe('not recorded')}\n")
    for text in c.warnings:
        w(f"warning: {safe(text)}\n")
    labels = [safe(st.name) for st in docs[0].steps]
    width = max(len(x) for x in labels) + 2
    cells = [[_qcell(q) for q in row] for row in c.quantiles_us]
    col = max(len(x) for row in cells for x in row) + 3
    w("\np10 / p50 / p90 per step\n")
    w("step".ljust(width) + "".join(n.rjust(col) for n in names) + "\n")
    for label, row in zip(labels, cells):
        w(label.ljust(width) + "".join(x.rjust(col) for x in row) + "\n")
    for f in range(1, len(docs)):
        w(f"\n{names[f]} against A: change of the {TRIM:.0%} trimmed mean, its {s.confidence:.0%} bootstrap "
          f"interval, Cliff's delta, permutation p (Holm-adjusted)\n")
        rows = [ch for ch in c.changes if ch.file == f]
        for ch, label in zip(rows, labels):
            pct = f"{ch.change * 100:+.0f}%" if ch.change is not None else "n/a"
            ci = f"[{fmt_delta(ch.ci_low_us)}, {fmt_delta(ch.ci_high_us)}]"
            mark = ("  <- " + ch.direction if ch.significant
                    else "  (< minimum)" if ch.p_adjusted < s.alpha else "")
            line = (f"{label.ljust(width)}{fmt_delta(ch.delta_us):>11} {pct:>6}  {ci:<24}"
                    f" d={ch.cliffs_delta:+.2f} {effect_label(ch.cliffs_delta):<10} p={_fmt_p(ch.p_adjusted):<7}{mark}")
            w(line.rstrip() + "\n")
    w(f"\nrule: a step changed significantly when p < {s.alpha:g} after Holm's adjustment over "
      f"{len(c.changes)} tests and its {TRIM:.0%} trimmed mean moved by at least {s.threshold:.0%} and "
      f"{s.floor_us:g} us{' (a tenth of a jiffy; --floor-us to change)' if c.default_floor else ''}\n")
    w(f"verdict: {safe(c.summary)}\n")


def _fmt_p(p: float) -> str:
    """p-values as people read them: 0.0123, or <1e-6."""
    return "<1e-6" if p < 1e-6 else f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def to_json(c: Comparison, gate: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``minivmm compare --json`` document (``minivmm/schemas/compare.schema.json``)."""
    from minivmm.schemas import stamp

    s = c.settings
    steps = []
    for i, st in enumerate(c.docs[0].steps):
        steps.append({
            "step": step_number(i), "op": st.op, "label": st.label,
            "files": [dict(q, n=len(d.steps[i].samples_ns)) for q, d in zip(c.quantiles_us[i], c.docs)],
            "changes": [{"file": ch.file, "delta_us": ch.delta_us,
                         "change_pct": None if ch.change is None else ch.change * 100,
                         "ci_low_us": ch.ci_low_us, "ci_high_us": ch.ci_high_us,
                         "cliffs_delta": ch.cliffs_delta, "effect": effect_label(ch.cliffs_delta),
                         "p_value": ch.p_value, "p_adjusted": ch.p_adjusted,
                         "needed_us": ch.needed_us, "significant": ch.significant, "direction": ch.direction}
                        for ch in c.changes if ch.step.index == i],
        })
    doc: dict[str, Any] = {
        "sequence": c.docs[0].sequence,
        "files": [{"path": d.path, "repetitions": d.repetitions, "kernel": d.kernel, "hz": d.hz,
                   "platform": d.platform, **document_load(d).to_json()} for d in c.docs],
        "settings": {"alpha": s.alpha, "threshold_pct": s.threshold * 100, "floor_us": s.floor_us,
                     "confidence": s.confidence, "resamples": s.resamples, "seed": s.seed,
                     "statistic": f"trimmed-mean-{TRIM:g}", "test": "permutation", "adjustment": "holm"},
        "warnings": c.warnings,
        "steps": steps,
        "changed": [{"file": ch.file, "step": step_number(ch.step.index), "label": ch.step.label,
                     "direction": ch.direction, "delta_us": ch.delta_us} for ch in c.changed],
        "summary": c.summary,
    }
    if gate is not None:
        doc["gate"] = gate
    return stamp("compare", doc)


def jiffy_us(hz: int) -> float:
    """The length of a jiffy in µs."""
    return 1e6 / hz if hz > 0 else math.inf
