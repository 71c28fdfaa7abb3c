"""The human report of ``minivmm timing``."""

from __future__ import annotations

from typing import Any, TextIO

from minivmm.timing.compare import Comparison, quantiles


def fmt_us(us: float) -> str:
    """A duration for people: µs below a millisecond, ms above."""
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} us"


def render(c: Comparison, host: dict[str, Any], overhead: dict[str, float], out: TextIO) -> None:
    """Write the report: strace-style example, measured table, model table, published, verdict."""
    w = out.write
    seq = c.sequence
    w(f"minivmm timing: sequence {seq.name}, {len(c.repetitions)} repetitions "
      f"{'with jitter (tick phase sampled)' if host['jitter'] else 'back to back (--no-jitter: locked to the tick, the spread is hidden)'}\n")
    w(f"host: kernel {host['kernel']}, HZ={host['hz']} ({host['hz_source']}), platform {host['platform']} "
      f"({host['platform_source']})\n")
    w(f"timer overhead: {overhead['p50_ns'] / 1000:.2f} us per timed ioctl (median; min "
      f"{overhead['min_ns'] / 1000:.2f} us; the clock reads sit beside the system call)\n")

    w("\none repetition, strace -T style (the median one for the stalled step):\n")
    i_rep = _median_repetition(c)
    rep = c.repetitions[i_rep]
    for step, rec, d in zip(seq.steps, rep.records, rep.durations_ns):
        w((rec.strace_line() if rec is not None else step.strace(d / 1e9)) + "\n")

    labels = [s.label for s in seq.steps]
    width = max(len(x) for x in labels) + 2
    w("\nmeasured" + " " * (width - 8) + "".join(h.rjust(11) for h in ("min", "p10", "p50", "p90", "max")) + "\n")
    for i, label in enumerate(labels):
        q = quantiles(c.measured[i])
        mark = "  <- stall" if i == c.stalled_step else ""
        w(label.ljust(width) + "".join(fmt_us(q[k]).rjust(11) for k in ("min", "p10", "p50", "p90", "max")) + mark + "\n")

    variants = list(c.predictions)
    cells = [[_cell(c.predictions[v].steps[i].stats()) for v in variants] for i in range(len(labels))]
    col = max(len(x) for row in cells for x in row + variants) + 3
    w(f"\nmodel p50 [p10 - p90] at HZ={host['hz']} on {host['platform']}, with the measured gaps\n")
    w(" " * width + "measured p50".rjust(14) + "".join(v.rjust(col) for v in variants) + "\n")
    for i, label in enumerate(labels):
        w(label.ljust(width) + fmt_us(quantiles(c.measured[i])["p50"]).rjust(14)
          + "".join(x.rjust(col) for x in cells[i]) + "\n")

    if c.published:
        w("\npublished figures beside the steps they correspond to\n")
        for i, figs in sorted(c.published.items()):
            for f in figs[:2]:
                before = f"{f.before_s:.6f} s" if f.before_s is not None else "-"
                after = f"{f.after_s:.6f} s" if f.after_s is not None else "-"
                hz = f"HZ={f.hz}" if f.hz else "any HZ"
                w(f"  {labels[i]}: {f.what} {before} before 7d9a0273c459, {after} after ({hz}, "
                  f"{f.platform}; {f.source})\n")
            if i == c.stalled_step:
                q = quantiles(c.measured[i])
                w(f"  here: p50 {fmt_us(q['p50'])} at HZ={host['hz']}: the stall scales as (1, 2] jiffies, "
                  f"so {1000 / host['hz']:.0f}-{2000 / host['hz']:.0f} ms here vs 10-20 ms at HZ=100\n")

    w("\nfit per variant (mean |ln(measured/predicted)| over the steps: p10/p50/p90 where the model predicts a "
      "spread, the median where it predicts one value; 0 is perfect)\n")
    for f in sorted(c.fits, key=lambda f: f.score):
        w(f"  {f.variant:<22} {f.score:.3f}\n")
    w(f"\nverdict: {c.verdict.text}\n")


def _cell(st: dict[str, float]) -> str:
    return f"{fmt_us(st['p50'])} [{fmt_us(st['p10'])} - {fmt_us(st['p90'])}]"


def _median_repetition(c: Comparison) -> int:
    i = c.stalled_step if c.stalled_step is not None else 0
    order = sorted(range(len(c.repetitions)), key=lambda r: c.repetitions[r].durations_ns[i])
    return order[len(order) // 2]
