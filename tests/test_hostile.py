"""Hostile and broken guests: every run ends in a classified outcome, bounded in time, with no crash."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minivmm.devices.console import Console
from minivmm.vmm.boot import Mode
from minivmm.vmm.machine import Machine, MachineConfig
from minivmm.vmm.report import RunOutcome

pytestmark = pytest.mark.kvm

CLASSIFIED = {RunOutcome.HALTED, RunOutcome.FAILED, RunOutcome.TIMEOUT}
TIMEOUT = 0.3


def run(image: bytes, mode: Mode, console: Console | None = None, **cfg):
    with Machine(MachineConfig(mode=mode, timeout=cfg.pop("timeout", TIMEOUT), **cfg), image,
                 console or Console()) as machine:
        return machine.run()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(list(Mode)), st.binary(min_size=1, max_size=96))
def test_random_images_end_in_a_classified_outcome_within_the_timeout(mode, image):
    t0 = time.monotonic()
    report = run(image, mode)
    assert report.outcome in CLASSIFIED, report.outcome
    assert time.monotonic() - t0 < TIMEOUT + 3
    if report.outcome is not RunOutcome.HALTED:
        assert report.vcpus[0].registers or report.vcpus[0].error  # the report says where it was


def test_jump_outside_ram_is_a_guest_failure_that_says_where():
    # long mode: mov eax, 0xe0000000; jmp rax
    report = run(bytes.fromhex("b8000000e0ffe0"), Mode.LONG)
    assert report.outcome is RunOutcome.FAILED
    assert "outside guest RAM" in report.vcpus[0].instruction


def test_guest_that_wipes_its_own_page_tables_ends_in_shutdown():
    # mov rdi, cr3; xor eax, eax; mov ecx, 512; rep stosq; nop; hlt
    report = run(bytes.fromhex("0f20df31c0b900020000f348ab90f4"), Mode.LONG)
    assert report.outcome is RunOutcome.FAILED and report.vcpus[0].last_exit == "SHUTDOWN"


def test_console_flood_is_bounded_and_the_run_stays_responsive():
    flood = bytes.fromhex("bae900b041eeebfd")  # mov dx, 0xe9; mov al, 'A'; out dx, al; jmp back
    t0 = time.monotonic()
    report = run(flood, Mode.REAL, console=Console(capture_limit=1000))
    assert report.outcome is RunOutcome.TIMEOUT and time.monotonic() - t0 < TIMEOUT + 2
    assert len(report.console) == 1000 and report.console_dropped > 0


UNCLAIMED_32 = bytes.fromhex(
    "e460" "66e560" "e560"            # in al/ax/eax, 0x60
    "e660" "66e760" "e760"            # out 0x60, al/ax/eax
    "bb000000e0"                      # mov ebx, 0xe0000000 (no memslot, no device)
    "8a03" "668b03" "8b03"            # 1-, 2-, 4-byte MMIO reads
    "8803" "668903" "8903"            # 1-, 2-, 4-byte MMIO writes
    "f4")
UNCLAIMED_64 = bytes.fromhex("bb000000e0" "488b03" "488903" "f4")  # 8-byte read and write


def test_unclaimed_accesses_of_every_size_read_zeros_and_are_counted():
    report = run(UNCLAIMED_32, Mode.PROTECTED)
    assert report.outcome is RunOutcome.HALTED
    assert report.vcpus[0].unclaimed == 12
    sizes = sorted((u["space"], u["size"], u["is_write"]) for u in report.vcpus[0].first_unclaimed)
    assert ("pio", 4, True) in sizes and ("mmio", 1, False) in sizes
    long = run(UNCLAIMED_64, Mode.LONG)
    assert long.outcome is RunOutcome.HALTED and long.vcpus[0].unclaimed == 2


def test_strict_stops_at_the_first_unclaimed_access():
    report = run(UNCLAIMED_32, Mode.PROTECTED, strict=True)
    assert report.outcome is RunOutcome.FAILED and report.vcpus[0].unclaimed == 1


def test_string_io_to_an_unclaimed_port_and_from_the_serial_port():
    outs = run(bytes.fromhex("be0020b90010ba8000f36ef4"), Mode.REAL)  # rep outsb x4096 to port 0x80
    assert outs.outcome is RunOutcome.HALTED and outs.vcpus[0].unclaimed == 4096
    ins = run(bytes.fromhex("bf0030b91000baf803f36cf4"), Mode.REAL)   # rep insb x16 from the UART
    assert ins.outcome is RunOutcome.HALTED and ins.vcpus[0].unclaimed == 0
