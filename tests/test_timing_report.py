"""The timing report says only true things: warnings when the question cannot give the answer, a stall
marked only where one was measured, published figures set against the range the timer rule allows."""

from __future__ import annotations

import io
import random
import re

import pytest

from kernel_model.sequences import SEQUENCES
from minivmm.timing.compare import TimingHost, compare
from minivmm.timing.report import MIN_REPEAT, render
from minivmm.timing.runner import Repetition

OVERHEAD = {"p50_ns": 300.0, "min_ns": 280.0}


def reps(seq, n: int, stall_step: int | None = None, stall_ns: int = 6_000_000, seed: int = 0):
    """``n`` synthetic repetitions: every step ~50 us, one step stalled if asked (no KVM needed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        durations = [50_000 + rng.randrange(5_000) for _ in seq.steps]
        if stall_step is not None:
            durations[stall_step] = stall_ns + rng.randrange(2_000_000)
        out.append(Repetition(durations, [10_000] * len(seq.steps), [None] * len(seq.steps)))
    return out


def host(**kw):
    facts = {"kernel": "test", "machine": "x86_64", "hz": 250, "hz_source": "/proc/config.gz", "platform": "pvm",
             "platform_source": "kvm_pvm loaded", "backend_module": "kvm_pvm", "srcutree_params": {},
             "jitter": True, "host_hz": 250, "host_platform": "pvm", "partial": None}
    facts.update(kw)
    return TimingHost(**facts)


def report(seq_name="registrations-first", n=40, stall=True, **facts) -> str:
    seq = SEQUENCES[seq_name]
    h = host(**facts)
    stall_step = next(i for i, s in enumerate(seq.steps) if s.op == "memslot") if stall else None
    c = compare(seq, reps(seq, n, stall_step), h.hz, h.platform, 50)
    out = io.StringIO()
    render(c, h, OVERHEAD, out)
    return out.getvalue()


def marked(text: str) -> list[str]:
    return [line.split("  ")[0] for line in text.splitlines() if line.endswith("<- stall")]


def test_a_stall_is_marked_only_where_one_was_measured():
    assert marked(report(stall=True)) == ["KVM_SET_USER_MEMORY_REGION, slot 0"]
    text = report(stall=False)
    assert marked(text) == []
    assert "call_srcu would stall here; no stall measured" in text
    assert "here: no stall measured at this step" in text


def test_no_warning_when_the_run_asks_what_the_host_is():
    assert "warning:" not in report()


@pytest.mark.parametrize("facts,fragment", [
    ({"hz": 100, "hz_source": "--hz"}, "--hz 100 but this kernel runs at HZ=250"),
    ({"platform": "vmx", "platform_source": "--platform"}, "--platform vmx but the loaded KVM module is kvm_pvm"),
])
def test_an_hz_or_platform_that_contradicts_the_host_is_warned_about(facts, fragment):
    lines = [line for line in report(**facts).splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and fragment in lines[0]


def test_too_few_repetitions_are_warned_about_and_the_verdict_says_why():
    text = report(n=3)
    assert f"warning: --repeat 3 is too few to decide: p10 and p90 need at least {MIN_REPEAT}" in text
    assert "too few samples to decide" in text.split("verdict:", 1)[1]
    assert "too few" not in report(n=MIN_REPEAT)


def test_a_partial_run_says_so_at_the_top_and_at_the_end():
    text = report(n=25, partial=100)
    assert text.splitlines()[3].startswith("load: ")
    assert text.splitlines()[4].startswith("warning: partial results: interrupted (Ctrl-C) after 25 of 100")
    assert text.rstrip().endswith("(partial: interrupted after 25 of 100 repetitions)")


def test_the_load_is_stated_and_a_busy_host_is_warned_about_in_one_line():
    quiet = report(cpu_pressure_pct=3.5, load_average=(0.5, 0.4, 0.3))
    assert "load: CPU pressure 3.5% (PSI some, over the run), load average 0.50 0.40 0.30" in quiet
    assert "warning:" not in quiet
    busy = [x for x in report(cpu_pressure_pct=49.0, load_average=(4.0, 3.0, 2.0)).splitlines()
            if x.startswith("warning:")]
    assert len(busy) == 1 and "busy (CPU pressure 49% over the run, above 20%)" in busy[0]
    assert "may reflect the load" in busy[0]


def test_the_published_stall_is_set_against_the_range_the_timer_rule_allows():
    text = report("firecracker", hz=100, hz_source="--hz", host_hz=100, platform="vmx", platform_source="--platform",
                  host_platform="vmx", stall=False)
    line = next(x for x in text.splitlines() if x.strip().startswith("25.2 ms"))
    assert "outside (5.2 ms above) the 10-20 ms the timer rule allows at HZ=100" in line


def test_every_published_figure_cites_a_listed_source():
    text = report("firecracker", hz=100, hz_source="--hz", host_hz=100, platform="vmx", platform_source="--platform",
                  host_platform="vmx")
    section = text.split("published figures", 1)[1].split("\nfit per variant", 1)[0]
    cited = {int(x) for x in re.findall(r"\[(\d+)\]$", section, re.M)}
    listed = {int(x) for x in re.findall(r"^  \[(\d+)\] \S", section, re.M)}
    assert cited and cited == listed
    # cited as a reader can find them: author, date, (subject,) link; never an internal file number
    assert not re.search(r"\bseeds? ?0\d\d", text)
    for source in re.findall(r"^  \[\d+\] (.*)$", section, re.M):
        assert re.search(r"\b20\d\d\b", source) and ("http" in source or "commit" in source), source


def test_the_plot_a_kernel_engineer_can_put_in_a_mail(monkeypatch):
    """Distinct styles, identical predictions named as such, the legend outside the data, gridlines at 1
    and 2 jiffies, the published stall marked, and a linear ms axis on the stalled step."""
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minivmm.timing.plot import STYLES, plot
    kept = []
    monkeypatch.setattr(plt, "close", lambda fig: kept.append(fig))
    seq = SEQUENCES["firecracker"]
    c = compare(seq, reps(seq, 30, 9, stall_ns=14_000_000), 100, "vmx", 100)
    buf = io.BytesIO()
    plot(c, buf, 100, "vmx")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = kept[0]
    linear, log = fig.axes
    assert linear.get_xscale() == "linear" and log.get_xscale() == "log"
    vlines = sorted(round(line.get_xdata()[0], 6) for line in linear.lines if line.get_linestyle() != "-"
                    and len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2)
    assert vlines[:2] == [10.0, 20.0]                       # 1 and 2 jiffies at HZ=100
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(label.startswith("published: KVM_CREATE_VCPU, 0 25.2 ms, HZ=100") for label in labels)
    assert "model: created_vcpus (= sync at this step)" in labels
    styles = {(s["linestyle"], s["linewidth"]) for s in STYLES.values()}
    assert len(styles) == len(STYLES)
    fig.canvas.draw()
    legend_box = fig.legends[0].get_window_extent()
    for ax in fig.axes:
        assert not legend_box.overlaps(ax.get_window_extent())


def test_a_replayed_step_is_shown_as_the_pause_it_was_and_fds_by_their_role():
    from kernel_model.sequences import parse_sequence
    from minivmm.kvm.uapi import IoctlRecord
    from minivmm.timing.strace_lines import repetition_lines

    seq = parse_sequence("create_vm\nioctl name=KVM_SET_CPUID2 cost=83us\nvcpu id=0\n", "traced")
    rep = Repetition([220_000, 84_100, 70_000], [0, 10_000, 10_000],
                     [IoctlRecord(3, "KVM_CREATE_VM", "0", 4, 0, 220_000), None,
                      IoctlRecord(4, "KVM_CREATE_VCPU", "0", 12, 0, 70_000)])
    lines = repetition_lines(seq, rep)
    assert lines[0] == "ioctl(system, KVM_CREATE_VM, 0) = 4 <0.000220>"
    assert lines[1] == ("pause <0.000084> (not issued: KVM_SET_CPUID2, replayed as a pause of its traced cost "
                        "<0.000083>)")
    assert lines[2] == "ioctl(vm, KVM_CREATE_VCPU, 0) = 12 <0.000070>"


def test_the_timing_document_is_read_back_as_the_gate_reads_it_before_any_json_round_trip():
    """timing --baseline gates on its own document as built (tuples, not lists): it must parse."""
    from minivmm.compare.documents import parse_timing
    from minivmm.timing.compare import to_json
    seq = SEQUENCES["registrations-first"]
    h = host(cpu_pressure_pct=5.0, load_average=(0.5, 0.4, 0.3))
    doc = to_json(compare(seq, reps(seq, 12), h.hz, h.platform, 50), h, OVERHEAD)
    parsed = parse_timing(doc, "this run")
    assert parsed.load_average == (0.5, 0.4, 0.3) and parsed.cpu_pressure_pct == 5.0
