"""Guests that fail, hang or misbehave end in a classified outcome with a useful report."""

from __future__ import annotations

import time

import pytest

from minivmm.cli.errors import outcome_exit_code
from minivmm.vmm.boot import Mode
from minivmm.vmm.report import RunOutcome

pytestmark = pytest.mark.kvm

# ud2 in protected or long mode: the IDT (base 0, in zeroed RAM) has no present gate, so #UD becomes #NP,
# then a double fault, then a triple fault.
UD2 = bytes.fromhex("0f0b")
INFINITE_LOOP = bytes.fromhex("ebfe")


@pytest.mark.parametrize("mode", [Mode.PROTECTED, Mode.LONG])
def test_triple_fault_is_a_shutdown_with_registers_and_instruction(boot, mode):
    report, log = boot(UD2, mode=mode)
    assert report.outcome is RunOutcome.FAILED and outcome_exit_code(report.outcome) == 1
    v = report.vcpus[0]
    assert v.state == "failed"
    assert v.last_exit == "SHUTDOWN"
    assert v.registers and v.rip is not None
    assert v.rip == 0x1000
    assert v.instruction == "ud2"  # disassembled by capstone


def test_infinite_loop_times_out_and_says_where(boot):
    t0 = time.monotonic()
    report, _ = boot(INFINITE_LOOP, timeout=0.3)
    assert time.monotonic() - t0 < 5
    assert report.outcome is RunOutcome.TIMEOUT and outcome_exit_code(report.outcome) == 1
    v = report.vcpus[0]
    assert v.state == "interrupted"
    assert v.rip == 0x1000
    assert v.instruction == "jmp 0x1000"


def test_timeout_stops_every_vcpu(boot):
    report, _ = boot(INFINITE_LOOP, timeout=0.3, vcpus=3)
    assert report.outcome is RunOutcome.TIMEOUT
    assert [v.state for v in report.vcpus] == ["interrupted"] * 3


# mov dx, 0x60; in al, dx; hlt   (port 0x60 has no device)
UNCLAIMED_IN = bytes.fromhex("ba6000" "ec" "f4")


def test_unclaimed_access_is_counted_and_strict_makes_it_fatal(boot):
    report, _ = boot(UNCLAIMED_IN)
    assert report.outcome is RunOutcome.HALTED
    assert report.vcpus[0].unclaimed == 1
    report, _ = boot(UNCLAIMED_IN, strict=True)
    assert report.outcome is RunOutcome.FAILED
    assert report.vcpus[0].first_unclaimed[0]["addr"] == 0x60


@pytest.mark.parametrize("mode", list(Mode))
def test_load_address_is_the_entry_point(boot, mode):
    report, _ = boot(INFINITE_LOOP, mode=mode, load_addr=0x8000, timeout=0.2)
    assert report.vcpus[0].rip == 0x8000
    assert report.vcpus[0].instruction == "jmp 0x8000"
