"""Grace-period attribution: which earlier step started the grace period a step waited for, read from
the model's own state (its grace-period requests and waits), never from the ioctls' names."""

from __future__ import annotations

import json

from kernel_model.explain import explain, explain_variant
from kernel_model.sequences import SEQUENCES, parse_sequence


def _by_op(steps, op):
    return [s for s in steps if s.op == op]


def test_registrations_first_under_call_srcu_the_memslot_waits_on_a_registrations_grace_period():
    seq = SEQUENCES["registrations-first"]
    steps = explain(seq, "call_srcu", 250, "pvm", samples=200)
    memslot = _by_op(steps, "memslot")[0]
    assert memslot.waited_for_gp and memslot.transferred
    assert memslot.gp_kind == "normal" and memslot.started_by_call == "call_srcu"
    # The grace period in flight when the memslot swap began was requested by the first registration
    # that found SRCU idle: the irqchip's first kvm_io_bus_register_dev(); the ioeventfds' call_srcu()
    # were queued behind it. Every other step waited for nothing.
    assert seq.steps[memslot.started_by_step].op == "irqchip"
    assert memslot.waited_ns > 1_000_000 and memslot.started_ns_before > 0
    assert [s.index for s in steps if s.waited_for_gp and s.srcu == "kvm->srcu"] == [memslot.index]
    # KVM_CREATE_IRQCHIP's kvm_set_irq_routing() waits for its own expedited grace period of irq_srcu.
    irqchip = _by_op(steps, "irqchip")[0]
    assert irqchip.waited_for_gp and irqchip.srcu == "kvm->irq_srcu" and not irqchip.transferred
    assert "started by step #2 KVM_CREATE_IRQCHIP (call_srcu)" in memslot.describe()


def test_after_a_pause_the_stall_is_attributed_to_the_last_registration():
    """Two jiffies after the first registration its grace period is over: the memslot then waits for
    the one the last registration started."""
    seq = parse_sequence("create_vm\nioeventfd addr=0xd0000000 len=4\nsleep 30ms\n"
                         "ioeventfd addr=0xd0001000 len=4\nmemslot slot=0 base=0 size=1M", "f")
    steps = explain(seq, "call_srcu", 250, "pvm", samples=50)
    assert steps[3].waited_for_gp and steps[3].started_by_step == 2
    assert 10_000 <= steps[3].started_ns_before < 100_000


def test_under_sync_nothing_waits_on_a_transferred_grace_period():
    for name in ("registrations-first", "firecracker"):
        steps = explain(SEQUENCES[name], "sync", 250, "vmx", samples=50)
        waited = [s for s in steps if s.waited_for_gp]
        assert waited and not any(s.transferred for s in waited)
        assert all(s.started_by_step == s.index and s.gp_kind == "expedited" for s in waited)


def test_call_srcu_expedited_removes_the_transferred_wait():
    steps = explain(SEQUENCES["registrations-first"], "call_srcu_expedited", 250, "pvm", samples=50)
    assert not any(s.transferred for s in steps)


def test_the_gsi_routing_waits_on_irq_srcu_not_on_kvm_srcu():
    seq = parse_sequence("create_vm\nirqchip\nioeventfd addr=0xd0000000 len=4\ngsi_routing entries=24\n"
                         "memslot slot=0 base=0 size=1M", "f")
    steps = explain(seq, "call_srcu", 250, "pvm", samples=50)
    routing, memslot = steps[3], steps[4]
    assert routing.srcu == "kvm->irq_srcu" and not routing.transferred and routing.started_by_step == 3
    assert memslot.srcu == "kvm->srcu" and memslot.transferred and memslot.started_by_step == 1


def test_an_unmodelled_ioctl_is_reported_as_a_fixed_cost():
    seq = parse_sequence("create_vm\nioctl name=KVM_SET_TSS_ADDR cost=12us\nvcpu id=0", "f")
    step = explain(seq, "call_srcu", 250, "vmx", samples=10)[1]
    assert not step.modelled and not step.waited_for_gp
    assert step.p50_us == 12.0
    assert "not modelled" in step.describe() and "12 us" in step.describe()


def test_the_whole_set_up_is_the_sum_of_steps_and_gaps():
    seq = SEQUENCES["registrations-first"]
    ex = explain_variant(seq, "sync", 250, "pvm", samples=20)
    per_sample = ex.prediction.setup_durations()
    gaps = sum(s.gap_ns for s in seq.steps[1:])
    assert per_sample[0] == sum(sp.durations[0] for sp in ex.prediction.steps) + gaps
    assert ex.setup["p50"] == per_sample[0] / 1000  # sync: no phase dependence
    stalled = explain_variant(seq, "call_srcu", 250, "pvm", samples=200)
    assert stalled.setup["p50"] > ex.setup["p50"] + 1000  # the transferred grace period, in µs


def test_model_explain_prints_the_attribution_and_the_set_up(capsys):
    from minivmm.cli.app import main
    assert main(["model", "-s", "registrations-first", "--hz", "250", "--platform", "pvm", "-n", "50",
                 "--explain"]) == 0
    out = capsys.readouterr().out
    assert "# variant call_srcu: why each step took its time; whole set-up" in out
    assert "for the normal grace period started by step #2 KVM_CREATE_IRQCHIP (call_srcu)" in out
    assert main(["model", "-s", "registrations-first", "-v", "call_srcu", "-n", "20", "--explain", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    explanation = data["variants"]["call_srcu"]["explanation"]
    assert len(explanation) == len(SEQUENCES["registrations-first"].steps)
    assert {"started_by_step", "gp_kind", "waited_for_gp", "modelled", "text"} <= explanation[8].keys()
    assert data["variants"]["call_srcu"]["setup_us"]["p50"] > 0


def test_explaining_a_sequence_the_kernel_refuses_names_the_step():
    import pytest

    from kernel_model.sequences import SequenceError
    seq = parse_sequence("create_vm\nioeventfd_deassign addr=0x10 len=4", "f")
    with pytest.raises(SequenceError, match="step 2"):
        explain(seq, "call_srcu", 250, "pvm", samples=5)
