"""``minivmm compare --plot FILE.png``: the changed steps' distributions overlaid, one panel per step,
with a dotted line at every jiffy so a tick-bound shift reads as "one more tick" at a glance. Sized to
read in a mail (900 px wide). Needs matplotlib (the ``plot`` extra)."""

from __future__ import annotations

from typing import BinaryIO

from kernel_model.stats import percentile
from minivmm.compare.ab import Comparison, StepChange, trimmed
from minivmm.durations import fmt_delta

#: At most this many panels: a mail reader scrolls no further, and the summary line names every change.
MAX_PANELS = 4
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def chosen_steps(c: Comparison) -> tuple[list[StepChange], bool]:
    """The changes to draw: the significant ones (largest first), or, when nothing changed, the step
    with the largest effect, so the picture still shows what was compared. Second value: any changed?"""
    changed = sorted(c.changed, key=lambda ch: -abs(ch.cliffs_delta))
    if changed:
        seen: set[int] = set()
        out = []
        for ch in changed:  # one panel per step, even if several files changed it
            if ch.step.index not in seen:
                seen.add(ch.step.index)
                out.append(ch)
        return out[:MAX_PANELS], True
    return [max(c.changes, key=lambda ch: (abs(ch.cliffs_delta), abs(ch.delta_us)))], False


def plot(c: Comparison, target: str | BinaryIO) -> None:
    """Write the PNG to a path or a binary file (see the module docstring)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, any_changed = chosen_steps(c)
    names = [chr(ord("A") + i) if i < 26 else str(i) for i in range(len(c.docs))]
    fig, axes = plt.subplots(len(steps), 1, figsize=(9, 2.9 * len(steps) + 0.6), squeeze=False)
    hz = c.docs[0].hz
    jiffy_ms = 1000 / hz
    for ax, ch in zip(axes[:, 0], steps):
        i = ch.step.index
        raw = [sorted(d.steps[i].samples_ns) for d in c.docs]
        # The bulk of each distribution (up to its 99th percentile): one stray 1 ms scheduling delay
        # would otherwise squeeze a 30 us step into one bin.
        lo_ns = min(x[0] for x in raw)
        hi_ns = max(percentile(x, 99) for x in raw)
        scale, unit = (1e6, "ms") if hi_ns >= 1e6 else (1e3, "us")
        lo, hi = lo_ns / scale, hi_ns / scale
        span = hi - lo or max(hi, 1e-3) * 0.1
        bins = [lo + span * k / 60 for k in range(61)]
        beyond = sum(1 for x in raw for v in x if v / scale > hi)
        for k, (name, xs_ns) in enumerate(zip(names, raw)):
            xs = [v / scale for v in xs_ns]
            colour = _COLOURS[k % len(_COLOURS)]
            ax.hist(xs, bins=bins, histtype="stepfilled", alpha=0.25, color=colour)
            ax.hist(xs, bins=bins, histtype="step", linewidth=1.6, color=colour,
                    label=f"{name}: {c.docs[k].path} (n={len(xs)})")
            ax.axvline(trimmed(xs), color=colour, linewidth=1.2, linestyle="--")
        jiffy = jiffy_ms * 1e6 / scale
        ticks = [j * jiffy for j in range(max(1, int(lo // jiffy)), int(hi // jiffy) + 2)
                 if lo - 0.05 * span <= j * jiffy <= hi + 0.05 * span]
        for t in ticks:
            ax.axvline(t, color="grey", linewidth=0.9, linestyle=":")
        note = (f"dotted: jiffies ({jiffy_ms:g} ms at HZ={hz})" if ticks
                else f"a jiffy ({jiffy_ms:g} ms at HZ={hz}) is wider than this range")
        if beyond:
            note += f"; {beyond} above the 99th percentile not shown"
        ax.set_xlim(lo - 0.05 * span, hi + 0.05 * span)
        pct = f" ({ch.change * 100:+.0f}%)" if ch.change is not None else ""
        pair = f" ({names[ch.file]} vs A)" if len(c.docs) > 2 else ""
        ax.set_title(f"{ch.step.name}{pair}: trimmed mean {fmt_delta(ch.delta_us)}{pct}, "
                     f"Cliff's d {ch.cliffs_delta:+.2f}, p={ch.p_adjusted:.2g}", fontsize=10)
        ax.set_xlabel(f"duration ({unit}); dashed: trimmed means; {note}", fontsize=9)
        ax.set_ylabel("repetitions", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=8, loc="best", framealpha=0.8)
    head = f"{c.docs[0].sequence}: " + ("steps that changed significantly" if any_changed
                                         else "no significant change; the largest effect, below the minimum "
                                              f"change ({c.settings.threshold:.0%}, {c.settings.floor_us:g} us)")
    if len(c.changed) > len(steps) and any_changed:
        head += f" ({len(steps)} of {len({ch.step.index for ch in c.changed})} shown)"
    fig.suptitle(head, fontsize=11)
    fig.tight_layout()
    fig.savefig(target, dpi=100, format="png")
    plt.close(fig)
