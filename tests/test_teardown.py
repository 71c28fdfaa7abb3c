"""The VM's teardown as a sequence step: how a file ends with it (or keeps its VM), what each variant's
kvm_destroy_vm() waits for, the explanation of that wait, and VMs destroyed back to back (churn)."""

from __future__ import annotations

import pytest

from kernel_model.churn import predict_churn
from kernel_model.explain import explain
from kernel_model.ops import OPS, Arg, CloseCall, OpSpec
from kernel_model.predict import predict
from kernel_model.sequences import KEEP_VM, SEQUENCES, SequenceError, format_sequence, parse_sequence, validate

HZ, TICK = 250, 4_000_000
ONE = "create_vm\nioeventfd addr=0xd0000050 len=4\n"
SEVERAL = "create_vm\n" + "".join(f"ioeventfd addr={0xd0000050 + i * 0x1000:#x} len=4\n" for i in range(3))


def teardown_ms(text: str, variant: str, samples: int = 400) -> dict[str, float]:
    p = predict(parse_sequence(text, "t"), variant, HZ, "pvm", samples=samples)
    assert p.steps[-1].step.op == "destroy_vm"
    return {k: v / 1000 for k, v in p.steps[-1].stats().items()}


def test_a_file_ends_with_the_teardown_after_its_last_gap_and_sleep():
    seq = parse_sequence("gap 20us\ncreate_vm\nioeventfd addr=0x10 len=4\nsleep 3ms\n", "f")
    assert [s.op for s in seq.steps] == ["create_vm", "ioeventfd", "destroy_vm"]
    assert seq.steps[-1].gap_ns == 3_020_000 and seq.destroys_vm
    assert seq.setup_steps() == seq.steps[:-1]
    written = parse_sequence("create_vm\ndestroy_vm\n", "f")
    assert [s.op for s in written.steps] == ["create_vm", "destroy_vm"]


def test_keep_vm_ends_a_sequence_without_its_teardown_and_round_trips():
    seq = parse_sequence(f"create_vm\nvcpu id=0\n{KEEP_VM}\n", "f")
    assert [s.op for s in seq.steps] == ["create_vm", "vcpu"] and not seq.destroys_vm
    text = format_sequence(seq)
    assert KEEP_VM in text
    assert [s.op for s in parse_sequence(text, "f").steps] == ["create_vm", "vcpu"]
    for named in SEQUENCES.values():
        again = parse_sequence(format_sequence(named), named.name)
        assert again.destroys_vm and KEEP_VM not in format_sequence(named)


@pytest.mark.parametrize("text,fragment", [
    ("create_vm\ndestroy_vm\nvcpu id=0", r"f:3: destroy_vm ends the sequence"),
    (f"create_vm\n{KEEP_VM}\ndestroy_vm", r"f:3: destroy_vm in a sequence that says keep_vm \(line 2\)"),
    (f"create_vm\n{KEEP_VM}\n{KEEP_VM}", r"f:3: 'keep_vm' given twice"),
    (f"create_vm\n{KEEP_VM} now", r"f:2: 'keep_vm' takes no argument"),
])
def test_a_misplaced_teardown_is_one_line_naming_the_line(text, fragment):
    import re
    with pytest.raises(SequenceError) as e:
        parse_sequence(text, "f")
    assert re.search(fragment, str(e.value)) and "\n" not in str(e.value)


def test_validation_refuses_a_teardown_before_the_last_step():
    from kernel_model.sequences import Sequence, Step
    seq = Sequence("s", "", (Step("create_vm"), Step("destroy_vm"), Step("vcpu", {"id": 0})))
    with pytest.raises(SequenceError, match="destroy_vm must be the last step"):
        validate(seq, "pvm")


def test_the_teardown_is_a_close_and_prints_as_strace_does():
    step = parse_sequence("create_vm\n", "f").steps[-1]
    assert step.strace(0.0141) == "close(vm) = 0 <0.014100>"
    assert step.strace(0.0141, {"vm": 4}) == "close(4) = 0 <0.014100>"
    assert OPS["destroy_vm"].close is not None and OPS["destroy_vm"].ioctl is None
    with pytest.raises(ValueError, match="exactly one of ioctl and close"):
        OpSpec("x", "", (Arg("a", "int"),), requests=(), label=str, ioctl=None, from_traced=None,
               model=lambda kvm, a, rng: None)
    assert CloseCall("vm").strace(1.0) == "close(vm) = 0 <1.000000>"


def test_closed_at_once_call_srcu_waits_for_the_callbacks_of_the_registrations_grace_period():
    """The registration's normal grace period ends on the second tick after it (1 to 2 jiffies), its
    callbacks one callback delay later, again on the second tick: 3 to 4 jiffies in all."""
    t = teardown_ms(ONE, "call_srcu")
    assert 3 * TICK / 1e6 - 0.5 < t["min"] and t["max"] < 4 * TICK / 1e6 + 0.5
    assert t["p90"] - t["p10"] > 0.6 * TICK / 1e6  # spread over the tick phase
    for variant in ("sync", "created_vcpus", "call_srcu_expedited"):
        other = teardown_ms(ONE, variant)
        assert other["max"] < 0.5, variant  # nothing pending: the fixed cost


def test_after_a_pause_or_a_wait_for_the_grace_period_nothing_is_pending():
    assert teardown_ms(ONE + "sleep 20ms\n", "call_srcu")["max"] < 0.5
    # A memslot after the registration waits for its grace period (expedited behind it), whose
    # callbacks then run at once: the teardown has nothing left to wait for.
    assert teardown_ms(ONE + "memslot slot=0 base=0 size=1M\n", "call_srcu")["max"] < 0.5


def test_several_registrations_closed_later_wait_for_the_rest_of_the_callback_delay():
    t = teardown_ms(SEVERAL + "sleep 5ms\n", "call_srcu")
    assert 3 * TICK / 1e6 - 5.5 < t["min"] < t["max"] < 4 * TICK / 1e6 - 4.5


def test_without_the_barrier_cleanup_warns_and_leaks():
    p = predict(parse_sequence(ONE, "t"), "call_srcu_no_barrier", HZ, "pvm", samples=5)
    assert any(v.kind.value == "teardown-without-barrier" for v in p.violations)
    assert p.steps[-1].stats()["max"] < 500
    assert not predict(parse_sequence(ONE, "t"), "call_srcu", HZ, "pvm", samples=5).violations


def test_the_explanation_names_the_grace_period_whose_callbacks_the_barrier_waited_for():
    steps = explain(parse_sequence(ONE, "t"), "call_srcu", HZ, "pvm", samples=100)
    last = steps[-1]
    assert last.call == "srcu_barrier" and last.waited_for_gp and last.started_by_step == 1
    text = last.describe()
    assert text.startswith("srcu_barrier waited ") and \
        "for the callbacks of the normal grace period started by step #2 KVM_IOEVENTFD, mmio 0xd0000050 (call_srcu)" \
        in text
    # Later registrations queue behind the first one's grace period for the next: that one's requester
    # (the second registration) is named.
    several = explain(parse_sequence(SEVERAL + "sleep 5ms\n", "t"), "call_srcu", HZ, "pvm", samples=100)[-1]
    assert several.started_by_step == 2 and "step #3 KVM_IOEVENTFD, mmio 0xd0001050" in several.describe()
    assert not explain(parse_sequence(ONE, "t"), "sync", HZ, "pvm", samples=20)[-1].waited_for_gp


def test_back_to_back_teardowns_lock_to_the_tick():
    """Each cycle starts just after the tick its teardown's callbacks ran on, so the next registration's
    grace period takes a whole two ticks: every cycle is four jiffies long, not 3.5 on average."""
    seq = parse_sequence(ONE, "t")
    p = predict_churn(seq, "call_srcu", HZ, "pvm", threads=1, cycles=40, between_ns=[50_000])
    assert all(3.8 * TICK < c <= 4.05 * TICK for c in p.cycle_ns[1:])
    assert 55 < p.rate < 65
    fast = predict_churn(seq, "call_srcu_expedited", HZ, "pvm", threads=1, cycles=40, between_ns=[50_000])
    assert fast.rate > 1000


def test_threads_with_their_own_vms_add_up_when_their_teardowns_wait_on_their_own_srcu():
    seq = parse_sequence(ONE, "t")
    one = predict_churn(seq, "call_srcu", HZ, "pvm", threads=1, cycles=30, between_ns=[50_000])
    three = predict_churn(seq, "call_srcu", HZ, "pvm", threads=3, cycles=30, between_ns=[50_000])
    assert 2.7 * one.rate < three.rate < 3.1 * one.rate


def test_teardowns_at_once_share_the_mmu_notifier_grace_period():
    """Without registrations each teardown's only wait is mmu_notifier_unregister()'s grace period of
    the host's one mmu-notifier srcu_struct: expedited when idle, normal (a timer tick) when another
    thread's teardown has just used it. Two threads then do not double one thread's rate."""
    seq = parse_sequence("create_vm\n", "t")
    between = [40_000, 60_000, 90_000]
    one = predict_churn(seq, "sync", HZ, "pvm", threads=1, cycles=200, between_ns=between)
    two = predict_churn(seq, "sync", HZ, "pvm", threads=2, cycles=200, between_ns=between)
    assert max(one.cycle_ns) < 1_000_000  # alone: always expedited
    assert max(two.cycle_ns) > TICK  # some waited for a normal grace period
    assert two.rate < 2 * one.rate * 0.9
