"""The human report of ``minivmm timing``: it says only what was measured, and says when the question
asked (``--hz``, ``--platform``, ``--repeat``) cannot give the answer the verdict seems to give."""

from __future__ import annotations

from typing import TextIO

from kernel_model.stats import STALL_NS, is_stall, quantiles
from minivmm.durations import fmt_us
from minivmm.timing.compare import Comparison, TimingHost
from minivmm.timing.pressure import Load
from minivmm.timing.strace_lines import repetition_lines
from minivmm.timing.verdict import render_table

#: Fewer repetitions than this cannot estimate p10 and p90, which the fit compares: the 10% tails would
#: rest on one or two samples each.
MIN_REPEAT = 20


def render(c: Comparison, host: TimingHost, overhead: dict[str, float], out: TextIO) -> None:
    """Write the report: strace-style example, measured table, model table, published, verdict."""
    w = out.write
    seq = c.sequence
    how = ("with jitter (tick phase sampled)" if host.jitter
           else "back to back (--no-jitter: locked to the tick, the spread is hidden)")
    w(f"minivmm timing: sequence {seq.name}, {len(c.repetitions)} repetitions {how}\n")
    w(f"host: kernel {host.kernel}, HZ={host.hz} ({host.hz_source}), platform {host.platform} "
      f"({host.platform_source})\n")
    w(f"timer overhead: {overhead['p50_ns'] / 1000:.2f} us per timed ioctl (median; min "
      f"{overhead['min_ns'] / 1000:.2f} us; the clock reads sit beside the system call)\n")
    w(f"load: {host_load(host).describe()}\n")
    for line in warnings(c, host):
        w(f"warning: {line}\n")

    w("\none repetition, strace -T style (the median one for the stalled step):\n")
    i_rep = _median_repetition(c)
    rep = c.repetitions[i_rep]
    for line in repetition_lines(seq, rep):
        w(line + "\n")

    labels = [s.label for s in seq.steps]
    width = max(len(x) for x in labels) + 2
    w("\nmeasured" + " " * (width - 8) + "".join(h.rjust(11) for h in ("min", "p10", "p50", "p90", "max")) + "\n")
    stalls = measured_stalls(c)
    for i, label in enumerate(labels):
        q = quantiles(c.measured[i])
        mark = "  <- stall" if i in stalls else ""
        if i == c.stalled_step and i not in stalls:
            mark = "  <- call_srcu would stall here; no stall measured"
        w(label.ljust(width) + "".join(fmt_us(q[k]).rjust(11) for k in ("min", "p10", "p50", "p90", "max"))
          + mark + "\n")
    if stalls:
        w(f"(a stall: a step whose median is {STALL_NS / 1e6:g} ms or more, a grace-period wait)\n")

    variants = list(c.predictions)
    cells = [[_cell(c.predictions[v].steps[i].stats()) for v in variants] for i in range(len(labels))]
    col = max(len(x) for row in cells for x in row + variants) + 3
    w(f"\nmodel p50 [p10 - p90] at HZ={host.hz} on {host.platform}, with the measured gaps\n")
    w(" " * width + "measured p50".rjust(14) + "".join(v.rjust(col) for v in variants) + "\n")
    for i, label in enumerate(labels):
        w(label.ljust(width) + fmt_us(quantiles(c.measured[i])["p50"]).rjust(14)
          + "".join(x.rjust(col) for x in cells[i]) + "\n")

    if c.published:
        render_published(c, host, stalls, labels, out)

    render_table(c.verdict, out)
    w(f"\nverdict: {c.verdict.text}\n")
    if len(c.repetitions) < MIN_REPEAT:
        w(f"(with {len(c.repetitions)} repetitions the fit rests on too few samples to decide: "
          f"run --repeat {MIN_REPEAT} or more; the default is 100)\n")
    if host.partial:
        w(f"(partial: interrupted after {len(c.repetitions)} of {host.partial} repetitions)\n")


def host_load(host: TimingHost) -> Load:
    """The run's load, as the host facts carry it."""
    return Load(host.cpu_pressure_pct, host.load_average)


def measured_stalls(c: Comparison) -> set[int]:
    """The steps whose measured median is a stall (:func:`kernel_model.stats.is_stall`): only these get
    the mark."""
    return {i for i, samples in enumerate(c.measured) if is_stall(quantiles(samples)["p50"] * 1000)}


def warnings(c: Comparison, host: TimingHost) -> list[str]:
    """What makes this run's answer weaker than it looks: an --hz or --platform that is not the host's
    (the model then predicts another kernel than the one measured), too few repetitions, a partial run."""
    out = []
    busy = host_load(host).warning()
    if busy:
        out.append(busy)
    if host.partial:
        out.append(f"partial results: interrupted (Ctrl-C) after {len(c.repetitions)} of {host.partial} "
                   "repetitions; what follows is what was measured until then")
    real_hz, real_platform = host.host_hz, host.host_platform
    if host.hz_source == "--hz" and real_hz is not None and real_hz != host.hz:
        out.append(f"--hz {host.hz} but this kernel runs at HZ={real_hz}: the model predicts a kernel at "
                   f"HZ={host.hz}, the measurements come from one at HZ={real_hz}; the fit and the "
                   "verdict compare the two and can name a variant this host does not run")
    if host.platform_source == "--platform" and real_platform is not None and real_platform != host.platform:
        out.append(f"--platform {host.platform} but the loaded KVM module is {host.backend_module} "
                   f"({real_platform}): the model places the stall where {host.platform} has it, which may "
                   "not be where this host has it")
    if len(c.repetitions) < MIN_REPEAT:
        out.append(f"--repeat {len(c.repetitions)} is too few to decide: p10 and p90 need at least "
                   f"{MIN_REPEAT} repetitions (the default is 100)")
    return out


def split_source(source: str) -> tuple[str, str]:
    """A figure's source as (the message: author, subject, date, link; what is said about the figure):
    several figures from one message are then cited once."""
    import re
    m = re.search(r"https?://\S+", source)
    if m is None:
        return source, ""
    end = m.end()
    while end > m.start() and source[end - 1] in ":,;.":
        end -= 1
    note = source[end:].lstrip(":,; ").strip()
    if note.startswith("(") and ")" in note:  # "(arm64; HZ not stated), strace -T" -> "arm64; HZ not stated, strace -T"
        inner, _, rest = note[1:].partition(")")
        note = inner + rest
    return source[:end], note.strip(" ,")


def render_published(c: Comparison, host: TimingHost, stalls: set[int], labels: list[str],
                     out: TextIO) -> None:
    """The published figures beside the steps they correspond to, each with its source cited once below,
    and whether a published stall is inside the range the timer rule allows at its HZ."""
    w = out.write
    sources: list[str] = []
    w("\npublished figures beside the steps they correspond to\n")
    for i, figs in sorted(c.published.items()):
        for fig in figs[:2]:
            message, note = split_source(fig.source)
            if message not in sources:
                sources.append(message)
            before = f"{fig.before_s:.6f} s" if fig.before_s is not None else "-"
            after = f"{fig.after_s:.6f} s" if fig.after_s is not None else "-"
            hz = f"HZ={fig.hz}" if fig.hz else "HZ not stated"
            items = (y.strip() for y in note.replace(";", ",").split(","))
            said = [x for x in items if x and x not in (hz, fig.platform)]  # not what the line already says
            w(f"  {labels[i]}: {fig.what} {before} before 7d9a0273c459, {after} after ({hz}, {fig.platform}"
              f"{'; ' + ', '.join(said) if said else ''}) [{sources.index(message) + 1}]\n")
            if fig.kind == "stalled" and fig.hz and fig.after_s is not None and fig.after_s > 0.005:
                lo, hi, ms = 1000 / fig.hz, 2000 / fig.hz, fig.after_s * 1000
                where = ("inside" if lo <= ms <= hi else
                         f"outside ({ms - hi:.1f} ms above)" if ms > hi else f"outside ({lo - ms:.1f} ms below)")
                w(f"    {ms:.1f} ms is {where} the {lo:.0f}-{hi:.0f} ms the timer rule allows at HZ={fig.hz} "
                  "(more than 1, at most 2 jiffies)" + ("" if lo <= ms <= hi else
                                                       ": something the model leaves out added the rest") + "\n")
        if i == c.stalled_step:
            q = quantiles(c.measured[i])
            lo, hi = 1000 / host.hz, 2000 / host.hz
            if i in stalls:
                ms = q["p50"] / 1000
                inside = "inside" if lo <= ms <= hi else "outside"
                w(f"  here: p50 {fmt_us(q['p50'])} at HZ={host.hz}, {inside} the {lo:.0f}-{hi:.0f} ms "
                  "the rule allows at this HZ\n")
            else:
                w(f"  here: no stall measured at this step (p50 {fmt_us(q['p50'])}); under call_srcu it would "
                  f"take {lo:.0f}-{hi:.0f} ms at HZ={host.hz}\n")
    for n, source in enumerate(sources, 1):
        w(f"  [{n}] {source}\n")


def _cell(st: dict[str, float]) -> str:
    return f"{fmt_us(st['p50'])} [{fmt_us(st['p10'])} - {fmt_us(st['p90'])}]"


def _median_repetition(c: Comparison) -> int:
    i = c.stalled_step if c.stalled_step is not None else 0
    order = sorted(range(len(c.repetitions)), key=lambda r: c.repetitions[r].durations_ns[i])
    return order[len(order) // 2]
