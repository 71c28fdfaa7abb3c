"""``--plot FILE.png``: measured against predicted distributions (needs the ``plot`` extra, matplotlib)."""

from __future__ import annotations

from typing import BinaryIO

from minivmm.timing.compare import Comparison


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def check_available() -> None:
    """Fail early (before measuring) if matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'minivmm[plot]'") from None


def plot(c: Comparison, out: BinaryIO, hz: int, platform: str) -> None:
    """One panel per interesting step (the stalled one, or the slowest two): the cumulative
    distribution measured on the host (thick) and predicted by each variant (thin)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(c.sequence.steps)
    if c.stalled_step is not None:
        chosen = [c.stalled_step]
    else:
        chosen = sorted(range(n), key=lambda i: -sorted(c.measured[i])[len(c.measured[i]) // 2])[:2]
    fig, axes = plt.subplots(1, len(chosen), figsize=(7 * len(chosen), 4.5), squeeze=False)
    for ax, i in zip(axes[0], chosen):
        measured = sorted(d / 1e6 for d in c.measured[i])
        ys = [(k + 1) / len(measured) for k in range(len(measured))]
        ax.step(measured, ys, where="post", linewidth=3, color="black", label="measured on this host")
        for variant, pred in c.predictions.items():
            xs = sorted(d / 1e6 for d in pred.steps[i].durations)
            ax.step(xs, [(k + 1) / len(xs) for k in range(len(xs))], where="post", linewidth=1.2,
                    label=f"model: {variant}")
        ax.set_xscale("log")
        ax.set_xlabel("duration (ms, log scale)")
        ax.set_ylabel("fraction of repetitions")
        ax.set_title(c.sequence.steps[i].label, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{c.sequence.name} at HZ={hz} on {platform}: {c.verdict.variant or 'no variant'} fits best",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
