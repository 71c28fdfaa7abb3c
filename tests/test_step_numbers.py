"""One numbering of set-up steps: the same stalled step has the same number in the trace's text and
``--json``, its OpenMetrics, ``model --explain`` of the saved sequence and a timing document; the trace
shows its own ioctl index beside it, labelled. (No kernel needed: a synthetic trace.)"""

from __future__ import annotations

import io
import json

from test_trace_explain import synthetic_trace

from kernel_model.explain import explain_variant
from kernel_model.sequences import SEQUENCES, step_name, step_number
from minivmm.compare.openmetrics import trace_families
from minivmm.trace.explain import explain
from minivmm.trace.report import render_explanation, to_json, write_json

MEMSLOT = 7  # its position in the synthetic trace's sequence: create_vm, six ioeventfds, the memslot


def test_steps_are_numbered_from_1_and_1_is_create_vm():
    seq = SEQUENCES["registrations-first"]
    assert step_number(0) == 1 and seq.steps[0].op == "create_vm"
    assert step_name(8, seq.steps[8].label) == "#9 KVM_SET_USER_MEMORY_REGION, slot 0"


def _with_srcu_timer(r, armed_in: int, fired_in: int, fires_after_ns: int):
    """``r`` with the kernel's SRCU record of a grace-period timer armed during ioctl ``armed_in`` that
    fires ``fires_after_ns`` into ioctl ``fired_in`` (the record test_trace_explain builds, in short)."""
    from minivmm.trace import srcu_check as sc
    from minivmm.tracefs import Record
    armed = (r.events[armed_in].kernel_enter_ns or 0) + 500
    fire = (r.events[fired_in].kernel_enter_ns or 0) + fires_after_ns
    timeline = sc.SrcuTimeline(threads={100})
    timeline.feed([Record(armed, 0, sc.TIMER_START, 100, (0xA0,)), Record(fire, 0, sc.TIMER_EXPIRE, 0, (0xA0,)),
                   Record(fire + 1, 0, sc.QUEUE, 0, (0x80,)), Record(fire + 9000, 1, sc.EXECUTE, 7, (0x80, 1))])
    return type(r)(**{**r.__dict__, "srcu": timeline})


def test_a_stalled_step_has_one_number_everywhere():
    r = _with_srcu_timer(synthetic_trace(6_000_000), armed_in=2, fired_in=8, fires_after_ns=4_000_000)
    ex = explain(r, hz=250, platform="vmx", samples=30)
    number = step_number(MEMSLOT)
    ioctl = ex.step_events[MEMSLOT]
    label = ex.sequence.steps[MEMSLOT].label
    assert (number, label) == (8, "KVM_SET_USER_MEMORY_REGION, slot 0") and ioctl == 8
    assert ex.step_number_of(ioctl) == number and ex.step_number_of(0) is None

    out = io.StringIO()
    render_explanation(r, ex, out)
    text = out.getvalue()
    assert f"  #{number} {label} (ioctl #{ioctl}): 6.00 ms" in text  # the stall, its ioctl labelled
    # The kernel's line names the ioctl that armed the timer by the step it became, its index beside.
    assert "kernel: SRCU grace-period timer armed during step #2 KVM_IOEVENTFD, mmio 0xd0000050 (ioctl #2) " in text

    doc = to_json(r, [ex], "", "exited", 0, {"hz": 250, "platform": "vmx"})
    (stalled,) = [s for s in doc["explanation"]["steps"] if s["stalled"]]
    assert (stalled["step"], stalled["ioctl"]) == (number, ioctl)
    assert doc["ioctls"][ioctl]["step"] == number and doc["ioctls"][0]["step"] is None  # not a step
    assert doc["vms"][0]["explanation"]["steps"][MEMSLOT]["step"] == number
    # Step n is ioctl #n here (ioctl #0, KVM_GET_API_VERSION on the system fd, is no step).
    gp = stalled["grace_period"]
    assert gp["started_by_step"] == gp["started_by_ioctl"] and f"started by step #{gp['started_by_step']} " in (
        stalled["attribution"][0])
    kernel = stalled["kernel"]
    assert (kernel["timer_armed_by_ioctl"], kernel["timer_armed_by_step"]) == (2, 2)
    assert kernel["model_started_by_step"] == gp["started_by_step"]

    streamed = io.StringIO()  # a long trace's ioctls are written one at a time: the same numbers
    write_json(r, to_json(r, [ex], "", "exited", 0, {"hz": 250, "platform": "vmx"}, ioctls=False), streamed)
    assert json.loads(streamed.getvalue())["ioctls"] == doc["ioctls"]

    steps = next(f for f in trace_families(doc) if f.name == "minivmm_trace_step_duration_seconds")
    assert [s.labels["step"] for s in steps.samples if s.labels["op"] == "memslot"] == [str(number)]

    # model --explain of the sequence the trace saved: the same number.
    model = explain_variant(ex.sequence, "call_srcu", 250, "vmx", samples=30)
    assert step_name(model.steps[MEMSLOT].index, model.steps[MEMSLOT].label) == f"#{number} {label}"
    assert model.steps[MEMSLOT].to_json()["step"] == number
