"""The differential harness: its generator and mode-by-mode comparison (kernel_model.differential), and
a few cases on real KVM (minivmm.timing.differential). No host timing is asserted: only that every
grace-period step is compared both ways."""

from __future__ import annotations

import random

import pytest

from kernel_model import differential
from kernel_model.sequences import parse_sequence
from minivmm.timing.runner import check_runnable

TICK = 4_000_000


def test_generated_sequences_are_reproducible_and_runnable():
    ra, rb = random.Random(7), random.Random(7)
    a = [differential.generate(ra, f"c{i}") for i in range(30)]
    b = [differential.generate(rb, f"c{i}") for i in range(30)]
    assert a == b
    ops = set()
    for i, text in enumerate(a):
        seq = parse_sequence(text, f"c{i}")
        check_runnable(seq, "pvm")
        ops |= {s.op for s in seq.steps}
    assert {"ioeventfd", "memslot", "vcpu"} <= ops


def test_grace_period_steps_are_memslot_changes_deregistrations_and_the_apic_page():
    seq = parse_sequence("create_vm\nirqchip\nioeventfd addr=0xd0000050 len=4\nvcpu id=0\n"
                         "ioeventfd_deassign addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n"
                         "vcpu id=1\n", "t")
    assert differential.waits_for_gp(seq, "pvm") == [1, 4, 5]
    assert differential.waits_for_gp(seq, "vmx") == [1, 3, 4, 5]


def test_paired_model_uses_each_repetitions_gaps():
    seq = parse_sequence("create_vm\nioeventfd addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n", "t")
    short = differential.model_paired(seq, [[10_000, 10_000, 10_000, 10_000]] * 50, 250, "pvm", None, 2, 1)[2]
    long = differential.model_paired(seq, [[10_000, 10_000, 8_500_000, 10_000]] * 50, 250, "pvm", None, 2, 1)[2]
    assert min(short) > 4_000_000 > 1_000_000 > max(long)  # after a 2-jiffy pause the grace period is over


def test_a_step_is_compared_mode_by_mode_with_the_host_against_itself_beside():
    rng = random.Random(4)

    def runs(n: int, slip: float) -> list[int]:
        return [int(rng.uniform(4.1e6, 8.0e6)) + (TICK if rng.random() < slip else 0) for _ in range(n)]

    host = runs(300, 0.08)
    agree = differential.compare_step("c", 3, "KVM_SET_USER_MEMORY_REGION", host, runs(900, 0.08), TICK)
    assert agree.ok and agree.host_vs_host.ok
    assert len(agree.model_vs_host.shares_ok) == 2  # the on-time mode and the slipped one
    never_slips = differential.compare_step("c", 3, "x", host, runs(900, 0.0), TICK)
    assert not never_slips.ok and never_slips.model_vs_host.shares_ok[1] is False
    s = differential.summarize([agree, never_slips])
    assert s["steps"] == 2 and s["within"] == 1 and len(s["misses"]) == 1
    assert s["misses"][0]["model_vs_host"]["shares"][1][1] == 0.0


@pytest.mark.kvm
def test_a_few_cases_on_the_host():
    from minivmm.timing.differential import run_case
    rng = random.Random(3)
    results = []
    for c in range(3):
        text = differential.generate(rng, f"k{c}")
        res, profile = run_case(f"k{c}", text, 12, 250, "pvm", None, 2, c)
        assert profile is None
        seq = parse_sequence(text, f"k{c}")
        assert [r.step for r in res] == differential.waits_for_gp(seq, "pvm")
        results += res
    assert results
    for r in results:
        assert len(r.host) == 12 and len(r.model) == 24 and r.fixed_vs_host is None
        assert sum(r.model_vs_host.a.shares) == pytest.approx(1.0)
    s = differential.summarize(results)
    assert s["steps"] == len(results) and 0 <= s["within"] <= s["steps"]
    assert len(s["misses"]) == s["steps"] - s["within"]
