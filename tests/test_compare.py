"""``minivmm compare``, the gate's decision and the OpenMetrics export, on recorded timing documents
(two real runs of registrations-first on a pvm host at HZ=250; no kernel needed)."""

from __future__ import annotations

import copy
import json
import pathlib

import pytest
from conftest import ROOT
from jsonschemas import validate

from minivmm.compare.ab import NotComparable, Settings, compare_documents, render, to_json
from minivmm.compare.documents import DocumentError, load_timing, parse_timing
from minivmm.compare.gate import GateOutcome, decide, parse_threshold

DATA = ROOT / "tests" / "data"
A, B = DATA / "timing-a.json", DATA / "timing-b.json"
MEMSLOT = 8  # the position of the step that takes the grace period in registrations-first (step #9)


def recorded(path: pathlib.Path = A) -> dict:
    return json.loads(path.read_text())


def write(tmp_path: pathlib.Path, name: str, doc: object) -> str:
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return str(p)


def planted(jiffies: float = 2, step: int = MEMSLOT, source: pathlib.Path = B) -> dict:
    """The second recorded run with every sample of one step ``jiffies`` ticks slower: what a kernel that
    waits two more grace-period ticks in that ioctl would show."""
    doc = recorded(source)
    tick_ns = 1_000_000_000 // doc["host"]["hz"]
    s = doc["steps"][step]
    s["samples_ns"] = [x + int(jiffies * tick_ns) for x in s["samples_ns"]]
    return doc


def noisy_pair() -> tuple[dict, dict]:
    """Ten repetitions a side, the memslot spread over five jiffies and a third slower on average: too
    few and too spread for the test to confirm the change. The gate's answer is unusable."""
    spread = [2_000_000 * (1 + k) for k in range(10)]
    base, noisy = recorded(A), recorded(B)
    for doc, samples in ((base, spread), (noisy, [x * 4 // 3 for x in reversed(spread)])):
        for s in doc["steps"]:
            s["samples_ns"] = s["samples_ns"][:10]
        doc["steps"][MEMSLOT]["samples_ns"] = samples
    return base, noisy


def test_two_recorded_runs_show_no_significant_change():
    c = compare_documents([load_timing(str(A)), load_timing(str(B))])
    assert c.summary == "no significant change" and not c.changed and not c.warnings
    assert len(c.changes) == 11
    validate(to_json(c))


def test_a_planted_two_jiffy_regression_is_caught_and_named(tmp_path):
    c = compare_documents([load_timing(str(A)), load_timing(write(tmp_path, "slow.json", planted()))])
    assert [ch.step.index for ch in c.changed] == [MEMSLOT]
    ch = c.changed[0]
    assert ch.direction == "slower" and ch.cliffs_delta > 0.9 and ch.p_adjusted < 0.01
    assert ch.ci_low_us <= 8000 <= ch.ci_high_us  # 2 jiffies at HZ=250
    assert "#9 KVM_SET_USER_MEMORY_REGION, slot 0" in c.summary and "slower" in c.summary
    doc = to_json(c)
    validate(doc)
    assert doc["changed"] == [{"file": 1, "step": MEMSLOT + 1, "label": "KVM_SET_USER_MEMORY_REGION, slot 0",
                               "direction": "slower", "delta_us": ch.delta_us}]


def test_a_regression_in_a_microsecond_step_is_caught_too(tmp_path):
    c = compare_documents([load_timing(str(A)), load_timing(write(tmp_path, "slow.json", planted(step=9)))])
    assert [ch.step.index for ch in c.changed] == [9]


def test_speed_ups_are_named_faster(tmp_path):
    c = compare_documents([load_timing(write(tmp_path, "slow.json", planted())), load_timing(str(A))])
    assert [ch.direction for ch in c.changed] == ["faster"]


def test_render_shows_quantiles_changes_and_the_verdict(tmp_path):
    import io
    out = io.StringIO()
    render(compare_documents([load_timing(str(A)), load_timing(write(tmp_path, "s.json", planted()))]), out)
    text = out.getvalue()
    assert "p10 / p50 / p90 per step" in text and "Holm" in text and "bootstrap" in text
    assert "<- slower" in text and text.strip().splitlines()[-1].startswith("verdict: changed significantly: #9")


def test_different_sequences_or_steps_are_not_comparable(tmp_path):
    other = recorded()
    other["sequence"] = "firecracker"
    with pytest.raises(NotComparable, match="times sequence 'registrations-first'.*'firecracker'"):
        compare_documents([load_timing(str(A)), parse_timing(other, "other.json")])
    fewer = recorded()
    del fewer["steps"][3]
    with pytest.raises(NotComparable, match="11 steps .* 10 in"):
        compare_documents([load_timing(str(A)), parse_timing(fewer, "fewer.json")])
    relabelled = recorded()
    relabelled["steps"][2]["label"] = "KVM_IOEVENTFD, pio 0x80"
    with pytest.raises(NotComparable, match="step #3"):
        compare_documents([load_timing(str(A)), parse_timing(relabelled, "r.json")])


def test_a_baseline_recorded_before_steps_were_numbered_from_1_is_still_read(tmp_path):
    """Timing documents of schema version 1 counted ``step`` from 0; comparison reads only op, label and
    samples, so an old baseline still compares (and names steps by the one numbering)."""
    old = recorded(B)
    old["schema_version"] = 1
    for s in old["steps"]:
        s["step"] -= 1
    c = compare_documents([load_timing(write(tmp_path, "old.json", old)),
                           load_timing(write(tmp_path, "slow.json", planted()))])
    assert [ch.step.index for ch in c.changed] == [MEMSLOT] and "#9 KVM_SET_USER_MEMORY_REGION" in c.summary
    old["schema_version"] = 0
    with pytest.raises(DocumentError, match="not a positive integer"):
        parse_timing(old, "zero.json")


def test_host_differences_are_warned_about_and_shown(tmp_path):
    import io
    other = recorded(B)
    other["host"].update(hz=1000, platform="vmx", kernel="6.19.0")
    c = compare_documents([load_timing(str(A)), parse_timing(other, "other.json")])
    text = " ".join(c.warnings)
    assert "HZ differs" in text and "platform differs" in text and "kernel differs" in text
    out = io.StringIO()
    render(c, out)
    assert out.getvalue().count("warning: ") == 3
    assert to_json(c)["warnings"] == c.warnings


def _bad_files(tmp_path: pathlib.Path) -> dict[str, tuple[str, str]]:
    """name -> (path, the fragment its one-line error must contain)."""
    full = A.read_text()
    future = recorded()
    future["schema_version"] = 99
    no_samples = recorded()
    del no_samples["steps"][4]["samples_ns"]
    floats = recorded()
    floats["steps"][0]["samples_ns"][0] = 1.5
    zero_hz = recorded()
    zero_hz["host"]["hz"] = 0
    cases = {
        "missing": (str(tmp_path / "nope.json"), "does not exist"),
        "directory": (str(tmp_path), "is a directory"),
        "empty": (str(tmp_path / "empty.json"), "is empty"),
        "truncated": (str(tmp_path / "cut.json"), "is truncated"),
        "not-json": (str(tmp_path / "text.json"), "is not JSON"),
        "binary": (str(tmp_path / "bin.json"), "is not JSON"),
        "array": (write(tmp_path, "array.json", [1, 2]), "not a minivmm document"),
        "unversioned": (write(tmp_path, "old.json", {"sequence": "x", "steps": []}), "has no schema_version"),
        "other-kind": (write(tmp_path, "model.json", {"schema_version": 1, "kind": "model"}), "is a 'model' document"),
        "future": (write(tmp_path, "future.json", future), "newer than this minivmm reads"),
        "no-samples": (write(tmp_path, "nosamples.json", no_samples), "steps[4].samples_ns is missing"),
        "float-samples": (write(tmp_path, "floats.json", floats), "must hold integers from 0"),
        "zero-hz": (write(tmp_path, "hz0.json", zero_hz), "host.hz is 0"),
        "fifo": (str(tmp_path / "fifo"), "not a regular file"),
    }
    (tmp_path / "empty.json").write_text("\n")
    (tmp_path / "cut.json").write_text(full[: len(full) // 2])
    (tmp_path / "text.json").write_text("sequence: firecracker\n")
    (tmp_path / "bin.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    import os
    os.mkfifo(tmp_path / "fifo")
    return cases


def test_every_bad_file_is_one_clear_line(tmp_path):
    for name, (path, fragment) in _bad_files(tmp_path).items():
        with pytest.raises(DocumentError) as e:
            load_timing(path, "baseline")
        message = str(e.value)
        assert fragment in message and "\n" not in message and message.startswith("baseline "), (name, message)


def test_gate_passes_two_runs_and_fails_a_planted_regression_naming_the_step(tmp_path):
    base = load_timing(str(A))
    ok = decide(base, load_timing(str(B)))
    assert ok.outcome is GateOutcome.PASS and ok.text.startswith("pass:")
    bad = decide(base, load_timing(write(tmp_path, "slow.json", planted())))
    assert bad.outcome is GateOutcome.REGRESSED and [c.step.index for c in bad.regressed] == [MEMSLOT]
    assert "#9 KVM_SET_USER_MEMORY_REGION, slot 0" in bad.text
    doc = recorded(B)
    doc["gate"] = bad.to_json()
    validate(doc)


def test_gate_threshold_decides_how_much_slower_counts(tmp_path):
    base = load_timing(str(A))
    # Half a jiffy on a ~5.7 ms median is ~+35%: a regression at 20%, not at 50%.
    slower = load_timing(write(tmp_path, "slow.json", planted(jiffies=0.5)))
    assert decide(base, slower, threshold=0.20).outcome is GateOutcome.REGRESSED
    assert decide(base, slower, threshold=0.50).outcome is GateOutcome.PASS


def test_gate_is_unusable_when_too_few_samples_or_too_noisy(tmp_path):
    base = load_timing(str(A))
    few = recorded(B)
    for s in few["steps"]:
        s["samples_ns"] = s["samples_ns"][:5]
    r = decide(base, parse_timing(few, "few.json"))
    assert r.outcome is GateOutcome.UNUSABLE and "too few repetitions" in r.text
    small_base, small_noisy = noisy_pair()
    r = decide(parse_timing(small_base, "base.json"), parse_timing(small_noisy, "noisy.json"))
    assert r.outcome is GateOutcome.UNUSABLE and "too noisy to decide" in r.text and "#9" in r.text


def test_gate_refuses_another_sequence():
    other = recorded(B)
    other["sequence"] = "firecracker"
    with pytest.raises(NotComparable):
        decide(load_timing(str(A)), parse_timing(other, "other.json"))


@pytest.mark.parametrize("text, value", [("20%", 0.2), ("5.5%", 0.055), (" 100 % ", 1.0)])
def test_threshold_parses_percentages(text, value):
    assert parse_threshold(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["20", "0.2", "abc", "-5%", "0%", "%", "20%%", "nan%", "1e3%", ""])
def test_threshold_refuses_what_is_not_a_percentage(text):
    with pytest.raises(ValueError, match="percentage"):
        parse_threshold(text)


def test_settings_change_the_rule():
    c = compare_documents([load_timing(str(A)), load_timing(str(B))], Settings(alpha=0.05, threshold=0.0,
                                                                              floor_us=0.0))
    # With no minimum change the create-irqchip shift of ~1.5 us (p ~ 0.001 after Holm) counts.
    assert [ch.step.index for ch in c.changed] == [1]
    assert copy.deepcopy(c.settings) == Settings(alpha=0.05, threshold=0.0, floor_us=0.0)


def test_openmetrics_parses_with_the_official_parsers():
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
    from prometheus_client.parser import text_string_to_metric_families as prometheus_text

    from minivmm.compare.openmetrics import timing_openmetrics

    doc = recorded()
    text = timing_openmetrics(doc)
    families = {f.name: f for f in openmetrics(text)}
    assert set(families) == {"minivmm_timing_step_duration_seconds", "minivmm_timing_other_steps_duration_seconds",
                             "minivmm_timing_other_steps", "minivmm_timing_verdict", "minivmm_timing_verdict_posterior"}
    steps = families["minivmm_timing_step_duration_seconds"]
    assert steps.type == "summary" and steps.unit == "seconds"
    # One series per step that stalls or tells the variants apart; KVM_CREATE_VM and the vCPUs are summed.
    shown = {s.labels["step"] for s in steps.samples}
    discriminating = {str(d["step"]) for d in doc["verdict"]["discriminating_steps"]}
    assert str(MEMSLOT + 1) in shown and shown == discriminating | {str(MEMSLOT + 1)} and "1" not in shown
    memslot = {s.labels.get("quantile", s.name): s for s in steps.samples if s.labels["step"] == str(MEMSLOT + 1)}
    assert memslot["0.5"].labels == {"sequence": "registrations-first", "kernel": doc["host"]["kernel"], "hz": "250",
                                     "platform": "pvm", "step": "9", "op": "memslot",
                                     "ioctl": "KVM_SET_USER_MEMORY_REGION, slot 0", "quantile": "0.5"}
    samples = doc["steps"][MEMSLOT]["samples_ns"]
    assert memslot["0"].value == min(samples) / 1e9 and memslot["1"].value == max(samples) / 1e9
    assert memslot["minivmm_timing_step_duration_seconds_count"].value == len(samples)
    assert memslot["minivmm_timing_step_duration_seconds_sum"].value == sum(samples) / 1e9
    others = families["minivmm_timing_other_steps"].samples[0].value
    assert others == len(doc["steps"]) - len(shown)
    (verdict,) = families["minivmm_timing_verdict"].samples
    assert verdict.name == "minivmm_timing_verdict_info" and verdict.labels["variant"] == "call_srcu"
    assert "verdict" not in memslot["0.5"].labels  # a new verdict starts no new step series
    # Exact values: the shortest decimal of ns / 1e9, no float noise.
    assert "99999" not in text and "00000001" not in text
    # node_exporter's textfile collector reads the Prometheus text format: the same file parses there.
    assert {f.name for f in prometheus_text(text)} >= {"minivmm_timing_step_duration_seconds"}


def test_openmetrics_labels_are_printable_utf_8():
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics

    from minivmm.compare.openmetrics import trace_openmetrics
    doc = {"command": ["/opt/\udc80vmm\x1b]0;t\x07"], "host": {"kernel": "6.18\r", "hz": 250, "platform": "pvm"},
           "ioctls": [], "explanation": None}
    text = trace_openmetrics(doc)
    text.encode("utf-8")  # a lone surrogate would not encode
    assert not any(c in text for c in ("\x1b", "\x07", "\r"))
    (family,) = [f for f in openmetrics(text) if f.name == "minivmm_trace_ioctls"]
    assert family.samples[0].labels["program"] == "\\udc80vmm\\x1b]0;t\\x07"


def test_plot_draws_the_changed_step(tmp_path):
    pytest.importorskip("matplotlib")
    from minivmm.compare.plot import chosen_steps, plot

    c = compare_documents([load_timing(str(A)), load_timing(write(tmp_path, "slow.json", planted()))])
    steps, changed = chosen_steps(c)
    assert changed and [s.step.index for s in steps] == [MEMSLOT]
    png = tmp_path / "c.png"
    plot(c, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps, changed = chosen_steps(compare_documents([load_timing(str(A)), load_timing(str(B))]))
    assert not changed and len(steps) == 1


def test_the_default_floor_is_a_tenth_of_a_jiffy_and_sub_floor_changes_are_shown_not_counted():
    import io
    c = compare_documents([load_timing(str(A)), load_timing(str(B))])
    assert c.settings.floor_us == pytest.approx(400.0) and c.default_floor  # HZ=250: a jiffy is 4 ms
    irqchip = c.changes[1]
    assert irqchip.p_adjusted < c.settings.alpha and not irqchip.significant
    out = io.StringIO()
    render(c, out)
    line = next(x for x in out.getvalue().splitlines() if x.startswith("#2 KVM_CREATE_IRQCHIP") and "d=" in x)
    assert line.endswith("(< minimum)")
    assert "400 us (a tenth of a jiffy; --floor-us to change)" in out.getvalue()


def test_trace_documents_export_to_openmetrics_too():
    """The shape of ``minivmm trace --json``: gauges, one value per step that stalls or discriminates,
    the rest summed."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics

    from minivmm.compare.openmetrics import trace_openmetrics

    doc = {"schema_version": 2, "command": ["/usr/bin/firecracker", "--api-sock", "x"],
           "host": {"kernel": "6.18.0", "hz": 250, "platform": "pvm", "cpu_pressure_pct": 12.5},
           "ioctls": [{"index": i} for i in range(14)],
           "explanation": {"hz": 250, "platform": "pvm",
                           "steps": [{"step": 1, "op": "create_vm", "label": "KVM_CREATE_VM", "measured_us": 210.0},
                                     {"step": 2, "op": "ioeventfd", "label": "KVM_IOEVENTFD", "measured_us": 1.061},
                                     {"step": 3, "op": "memslot", "label": "KVM_SET_USER_MEMORY_REGION, slot 0",
                                      "measured_us": 5880.0}],
                           "setup": {"measured_us": 6400.0},
                           "verdict": {"variant": "call_srcu", "posterior": {"call_srcu": 1.0, "sync": 0.0},
                                       "discriminating_steps": [{"step": 2}]}}}
    text = trace_openmetrics(doc)
    families = {f.name: f for f in openmetrics(text)}
    steps = families["minivmm_trace_step_duration_seconds"].samples
    assert [s.labels["step"] for s in steps] == ["2", "3"]  # the discriminating step and the stall
    assert steps[0].value == 1.061e-06 and "1.061e-06" in text  # exact, no float noise
    assert steps[1].labels["program"] == "firecracker" and steps[1].labels["hz"] == "250"
    assert families["minivmm_trace_other_steps_duration_seconds"].samples[0].value == 0.00021
    assert families["minivmm_trace_setup_duration_seconds"].samples[0].value == pytest.approx(0.0064)
    assert families["minivmm_trace_ioctls"].samples[0].value == 14
    assert families["minivmm_trace_cpu_pressure_ratio"].samples[0].value == 0.125
    assert families["minivmm_trace_verdict"].samples[0].labels["variant"] == "call_srcu"
    doc["explanation"] = None
    assert {f.name for f in openmetrics(trace_openmetrics(doc))} == {"minivmm_trace_ioctls",
                                                                     "minivmm_trace_cpu_pressure_ratio"}


def test_a_busy_host_is_warned_about_and_makes_the_gate_unusable(tmp_path):
    """CPU pressure over 20% while measuring: compare says so, the gate will not decide (not even on a
    real-looking regression, which the load alone produces on the stall step)."""
    import io
    busy = planted()
    busy["host"]["cpu_pressure_pct"] = 64.3
    busy["host"]["load_average"] = [5.5, 4.0, 3.0]
    doc = load_timing(write(tmp_path, "busy.json", busy))
    assert doc.cpu_pressure_pct == 64.3 and doc.load_average == (5.5, 4.0, 3.0)
    out = io.StringIO()
    render(compare_documents([load_timing(str(A)), doc]), out)
    assert "load: CPU pressure 64.3% (PSI some, over the run), load average 5.50 4.00 3.00" in out.getvalue()
    assert "load: CPU pressure not recorded" in out.getvalue()  # A says nothing about its load
    validate(busy, "timing")
    c = compare_documents([load_timing(str(A)), doc])
    assert any("host was busy" in w and "64.3%" in w for w in c.warnings)
    validate(to_json(c))
    r = decide(load_timing(str(A)), doc)
    assert r.outcome is GateOutcome.UNUSABLE and "busy host" in r.text and r.regressed
    quiet = recorded(B)
    quiet["host"]["cpu_pressure_pct"] = 3.0
    assert decide(load_timing(str(A)), load_timing(write(tmp_path, "quiet.json", quiet))).outcome is GateOutcome.PASS
    bad = recorded(B)
    bad["host"]["cpu_pressure_pct"] = "high"
    with pytest.raises(DocumentError, match="cpu_pressure_pct should be a percentage"):
        load_timing(write(tmp_path, "bad.json", bad))


def test_cpu_pressure_from_psi(tmp_path, monkeypatch):
    from minivmm.timing.pressure import PressureWindow, read_some_total_us

    psi = tmp_path / "cpu"
    psi.write_text("some avg10=1.00 avg60=0.50 avg300=0.10 total=1000000\nfull avg10=0.00 avg60=0.00 avg300=0.00 "
                   "total=0\n")
    assert read_some_total_us(str(psi)) == 1_000_000
    assert read_some_total_us(str(tmp_path / "none")) is None
    import itertools
    import types

    import minivmm.timing.pressure as pressure
    clock = itertools.chain([0], itertools.repeat(2_000_000_000))  # 2 s of wall time
    monkeypatch.setattr(pressure, "time", types.SimpleNamespace(monotonic_ns=lambda: next(clock)))
    w = PressureWindow.start(str(psi))
    psi.write_text("some avg10=50.0 avg60=20.0 avg300=5.0 total=1500000\n")  # 0.5 s of waiting
    assert w.percent() == 25.0
    assert PressureWindow(None, 0, str(psi)).percent() is None


def test_a_document_from_before_the_teardown_step_compares_without_it(tmp_path):
    """Timing documents recorded before the teardown was a step lack its last step: compared with one
    that has it, the steps both have are compared, and the report says so."""
    new = recorded(B)
    new["steps"].append({**new["steps"][-1], "step": len(new["steps"]), "op": "destroy_vm",
                         "label": "close(vm): kvm_destroy_vm()"})
    c = compare_documents([load_timing(str(A)), load_timing(write(tmp_path, "new.json", new))])
    assert len(c.changes) == 11 and c.summary == "no significant change"
    assert any("the teardown step (close of the VM fd) is in" in w and "compared without it" in w
               for w in c.warnings)
    assert decide(load_timing(str(A)), load_timing(write(tmp_path, "new2.json", new))).outcome is GateOutcome.PASS
