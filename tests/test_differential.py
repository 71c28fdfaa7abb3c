"""The differential harness (scripts/differential.py): its generator and comparison, and a few cases on
real KVM. No host timing is asserted: only that every grace-period step is compared both ways."""

from __future__ import annotations

import pathlib
import random
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))

import differential  # noqa: E402
from kernel_model.sequences import parse_sequence  # noqa: E402
from minivmm.timing.runner import check_runnable  # noqa: E402


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


def test_agreement_rule_is_ten_percent_or_a_third_of_a_millisecond():
    assert differential.agree(10_000_000, 10_900_000)
    assert not differential.agree(10_000_000, 11_200_000)
    assert differential.agree(100_000, 390_000)
    assert not differential.agree(100_000, 420_000)


def test_paired_model_uses_each_repetitions_gaps():
    seq = parse_sequence("create_vm\nioeventfd addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n", "t")
    short = differential.model_paired(seq, [[10_000, 10_000, 10_000]] * 50, 250, "pvm", None, 2, 1)[2]
    long = differential.model_paired(seq, [[10_000, 10_000, 8_500_000]] * 50, 250, "pvm", None, 2, 1)[2]
    assert min(short) > 4_000_000 > 1_000_000 > max(long)  # after a 2-jiffy pause the grace period is over


@pytest.mark.kvm
def test_a_few_cases_on_the_host():
    rng = random.Random(3)
    results = []
    for c in range(3):
        text = differential.generate(rng, f"k{c}")
        res = differential.run_case(f"k{c}", text, 12, 250, "pvm", None, 2, c)
        seq = parse_sequence(text, f"k{c}")
        assert [r.step for r in res] == differential.waits_for_gp(seq, "pvm")
        results += res
    assert results
    for r in results:
        assert set(r.host) == set(r.model) == {"p10", "p50", "p90"} == set(r.agree)
        assert all(v > 0 for v in r.host.values()) and all(v > 0 for v in r.model.values())
    s = differential.summarize(results)
    assert s["steps"] == len(results) and 0 <= s["within"] <= s["steps"]
    assert len(s["misses"]) == s["steps"] - s["within"]
