"""``--plot FILE.png``: measured against predicted distributions (needs the ``plot`` extra, matplotlib)."""

from __future__ import annotations

from typing import Any, BinaryIO

from minivmm.timing.compare import Comparison


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


#: Address space a plot takes: importing matplotlib and numpy maps ~105 MiB, drawing ~60 MiB more
#: (VmSize measured around ``compare --plot``), with room to spare.
PLOT_ADDRESS_SPACE = 256 << 20


def check_available() -> None:
    """Fail early (before measuring) if matplotlib cannot be imported: PlotUnavailable when it is not
    installed (or broken); MemoryError when the process has too little address space left for it."""
    import importlib.util

    _check_address_space()
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        if importlib.util.find_spec("matplotlib") is None:
            raise PlotUnavailable("--plot needs matplotlib: pip install 'minivmm[plot]'") from None
        if "memory" in str(e).lower() or "map segment" in str(e):  # a shared library that could not be mapped
            raise MemoryError(f"importing matplotlib: {e}") from None
        raise PlotUnavailable(f"--plot: matplotlib is installed but cannot be imported ({e})") from None


def _check_address_space() -> None:
    """Under a finite RLIMIT_AS, check that a plot's address space is still free before importing numpy:
    its OpenBLAS, failing to allocate its buffers, ends the process from C with no chance to report.
    A PROT_NONE mapping of that size is made and dropped (it counts against RLIMIT_AS, uses no memory)."""
    import mmap
    import resource

    if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:
        return
    try:
        mmap.mmap(-1, PLOT_ADDRESS_SPACE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=0).close()
    except OSError as e:
        raise MemoryError(f"a plot needs {PLOT_ADDRESS_SPACE >> 20} MiB of address space: {e.strerror}") from None


#: One style per variant, chosen so that identical predictions stay visible on top of each other:
#: a wide pale line under narrower dashed and dotted ones (sync, created_vcpus and call_srcu_expedited
#: predict the same curve for many steps).
STYLES: dict[str, dict[str, Any]] = {
    "sync": {"color": "#1f77b4", "linestyle": "-", "linewidth": 6, "alpha": 0.35},
    "call_srcu": {"color": "#ff7f0e", "linestyle": "-", "linewidth": 2},
    "created_vcpus": {"color": "#2ca02c", "linestyle": "--", "linewidth": 2.2},
    "call_srcu_expedited": {"color": "#d62728", "linestyle": ":", "linewidth": 2.6},
    "call_srcu_no_barrier": {"color": "#9467bd", "linestyle": "-.", "linewidth": 1.8},
}
MEASURED = {"color": "black", "linestyle": "-", "linewidth": 2.2, "zorder": 5}
#: The published figures' marks (marker, colour), one per figure shown on a panel.
PUBLISHED_MARKS = (("*", "#8c564b"), ("D", "#e377c2"), ("P", "#17becf"), ("X", "#bcbd22"))


def _who_when(source: str) -> str:
    """'Nikita Kalyazin, "Re: ...", Feb 13 2026, https://...' -> 'Nikita Kalyazin, Feb 13 2026'."""
    import re
    date = re.search(r"\b[A-Z][a-z]{2} \d{1,2} \d{4}\b", source)
    author = source.split(",")[0]
    return f"{author}, {date.group(0)}" if date else author


def _cdf(samples_ms: list[float]) -> tuple[list[float], list[float]]:
    xs = sorted(samples_ms)
    return xs, [(k + 1) / len(xs) for k in range(len(xs))]


def plot(c: Comparison, out: BinaryIO, hz: int, platform: str) -> None:
    """The step where the stall lands (or the two slowest steps when the model predicts none), as
    cumulative distributions: measured on this host (black) and predicted by each variant.

    The stalled step is drawn twice: on a linear millisecond axis with gridlines at 1 and 2 jiffies
    (where a grace-period stall must fall) and the published figure marked, and on a log axis that
    separates the sub-millisecond curves. Variants that predict the same curve say so in the legend,
    which sits below the panels, outside the data.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(c.sequence.steps)
    if c.stalled_step is not None:
        panels = [(c.stalled_step, "linear"), (c.stalled_step, "log")]
    else:
        slowest = sorted(range(n), key=lambda i: -sorted(c.measured[i])[len(c.measured[i]) // 2])[:2]
        panels = [(i, "log") for i in slowest]
    jiffy_ms = 1000 / hz
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.2), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, (i, scale) in zip(axes[0], panels):
        measured = [d / 1e6 for d in c.measured[i]]
        seen: dict[tuple[float, ...], str] = {}
        for variant, pred in c.predictions.items():
            xs, ys = _cdf([d / 1e6 for d in pred.steps[i].durations])
            key = tuple(round(x, 4) for x in xs[:: max(1, len(xs) // 50)])
            label = f"model: {variant}" + (f" (= {seen[key]} at this step)" if key in seen else "")
            seen.setdefault(key, variant)
            (line,) = ax.step(xs, ys, where="post", label=label, **STYLES.get(variant, {"linewidth": 1.5}))
            handles.setdefault(label, line)
        xs, ys = _cdf(measured)
        (line,) = ax.step(xs, ys, where="post", label=f"measured on this host ({len(measured)} runs)", **MEASURED)
        handles.setdefault(line.get_label(), line)
        top = max(xs[-1], 2 * jiffy_ms)
        published = [f for f in c.published.get(i, []) if f.after_s is not None and f.kind == "stalled"]
        for k, fig_ in enumerate(published):
            ms = fig_.after_s * 1000  # type: ignore[operator]  # filtered above
            top = max(top, ms)
            hz_text = f"HZ={fig_.hz}" if fig_.hz else "HZ not stated"
            label = f"published: {fig_.what} {ms:.1f} ms, {hz_text}, {fig_.platform} ({_who_when(fig_.source)})"
            marker, color = PUBLISHED_MARKS[k % len(PUBLISHED_MARKS)]
            (mark,) = ax.plot([ms], [0.5], marker=marker, markersize=11, linestyle="none", zorder=6, color=color,
                              markeredgecolor="black", markeredgewidth=0.6, label=label)
            ax.annotate(f"{ms:.1f} ms\n{hz_text}", (ms, 0.5), xytext=(0, 9 if k % 2 == 0 else -24),
                        textcoords="offset points", ha="center", fontsize=7, color=color)
            handles.setdefault(label, mark)
        for k in (1, 2):
            ax.axvline(k * jiffy_ms, color="grey", linewidth=1, linestyle=(0, (4, 3)), zorder=1)
            ax.text(k * jiffy_ms, 1.01, f"{k} jiffy" + ("" if k == 1 else "s"), transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8, color="dimgrey")
        if scale == "linear":
            ax.set_xlim(0, top * 1.08)
            ax.set_xlabel(f"duration (ms, linear; 1 jiffy = {jiffy_ms:g} ms at HZ={hz})")
        else:
            ax.set_xscale("log")
            ax.set_xlabel("duration (ms, log scale)")
        ax.set_ylim(0, 1.0)
        ax.set_ylabel("fraction of repetitions at or below")
        ax.set_title(c.sequence.steps[i].label, fontsize=10, pad=14)
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(f"{c.sequence.name} at HZ={hz} on {platform}: "
                 f"{c.verdict.variant + ' fits best' if c.verdict.variant else 'no variant fits well'}", fontsize=11)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=2, fontsize=8,
               frameon=False)
    rows = (len(handles) + 1) // 2
    fig.tight_layout(rect=(0, 0.035 * rows + 0.02, 1, 1))
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
