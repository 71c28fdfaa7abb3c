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

#: The outcomes a guest can cause. Never VIOLATION: the host's kernel is correct, so a violation here
#: would be the shadow accusing it falsely.
CLASSIFIED = {RunOutcome.HALTED, RunOutcome.FAILED, RunOutcome.TIMEOUT, RunOutcome.GUEST_ERROR}
TIMEOUT = 0.3


def run(image: bytes, mode: Mode, console: Console | None = None, **cfg):
    with Machine(MachineConfig(mode=mode, timeout=cfg.pop("timeout", TIMEOUT), **cfg), image,
                 console or Console()) as machine:
        return machine.run()


def assert_classified(report, t0: float) -> None:
    """The run ended in an outcome a guest can cause, in time, saying where it was if it did not halt,
    and the shadow (on) accused the kernel of nothing."""
    assert report.outcome in CLASSIFIED, (report.outcome, report.extra["shadow"])
    assert time.monotonic() - t0 < TIMEOUT + 3
    assert report.shadow is not None and report.shadow.violations == 0
    if report.outcome not in (RunOutcome.HALTED, RunOutcome.GUEST_ERROR):
        stuck = [v for v in report.vcpus if v.state != "halted"]
        assert all(v.registers or v.error for v in stuck)  # the report says where each was


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(list(Mode)), st.binary(min_size=1, max_size=4096))
@pytest.mark.slow
def test_random_images_end_in_a_classified_outcome_within_the_timeout(mode, image):
    t0 = time.monotonic()
    report = run(image, mode)
    assert_classified(report, t0)


# --- structured images: random mixes of real instructions, most of them exits -----------------------
# Encodings valid in both 32-bit protected mode and 64-bit long mode (no REX prefix, register-indirect
# addressing through ebx/rbx, which mov ebx, imm32 zero-extends in long mode).

def _mov_ebx(addr: int) -> bytes:
    return b"\xbb" + addr.to_bytes(4, "little")


def _mov_eax(value: int) -> bytes:
    return b"\xb8" + value.to_bytes(4, "little")


def _mov_dx(port: int) -> bytes:
    return b"\x66\xba" + port.to_bytes(2, "little")


#: Where the VMM has something, and where it has nothing: the scratch device, the static doorbell (an
#: ioeventfd), the control device, the run-time doorbells, unmapped MMIO above RAM and in the window.
MMIO_ADDRS = st.one_of(
    st.integers(0xD000_0000, 0xD000_0FFC), st.sampled_from([0xD000_1000, 0xD000_1004]),
    st.integers(0, 15).map(lambda s: 0xD001_0000 + s * 0x1000), st.integers(0xD000_2000, 0xD000_200C),
    st.integers(0x2000_0000, 0x2FFF_FFFF), st.integers(0xD000_0000, 0xD0FF_FFFF))
PORTS = st.one_of(st.sampled_from([0x3F8, 0x3F9, 0x3FD, 0x3FF, 0xE9, 0x80, 0x20, 0x21, 0x40, 0x43, 0x61]),
                  st.integers(0, 0xFFFF))
#: A command to the control device: register, unregister or report on a slot (some out of range), or
#: an unknown op; any count. Reports are lies as often as not: a guest error, never a violation.
COMMANDS = st.builds(lambda op, slot, count: op << 24 | slot << 16 | count,
                     st.sampled_from([1, 1, 2, 2, 3, 0, 7]), st.integers(0, 17), st.integers(0, 0xFFFF))

INSTRUCTIONS = st.one_of(
    st.builds(lambda a, v: _mov_ebx(a) + _mov_eax(v) + b"\x89\x03", MMIO_ADDRS, st.integers(0, 2**32 - 1)),
    st.builds(lambda a, v: _mov_ebx(a) + _mov_eax(v) + b"\x66\x89\x03", MMIO_ADDRS, st.integers(0, 2**32 - 1)),
    st.builds(lambda a, v: _mov_ebx(a) + bytes([0xC6, 0x03, v]), MMIO_ADDRS, st.integers(0, 255)),
    st.builds(lambda a: _mov_ebx(a) + b"\x8b\x03", MMIO_ADDRS),            # 4-byte MMIO read
    st.builds(lambda a: _mov_ebx(a) + b"\x8a\x03", MMIO_ADDRS),            # 1-byte MMIO read
    st.builds(lambda c: _mov_ebx(0xD000_2000) + _mov_eax(c) + b"\x89\x03" + b"\x8b\x43\x04", COMMANDS),
    st.builds(lambda p, v: _mov_dx(p) + _mov_eax(v) + b"\xee", PORTS, st.integers(0, 255)),       # out dx, al
    st.builds(lambda p, v: _mov_dx(p) + _mov_eax(v) + b"\xef", PORTS, st.integers(0, 2**32 - 1)),  # out dx, eax
    st.builds(lambda p: _mov_dx(p) + b"\xec", PORTS),                                               # in al, dx
    st.builds(lambda p: _mov_dx(p) + b"\x66\xed", PORTS),                                          # in ax, dx
)
#: Mostly real instructions, and one atom in 40 of junk bytes (which may fault or misalign the rest).
ATOMS = st.integers(0, 39).flatmap(lambda n: st.binary(min_size=1, max_size=8) if n == 0 else INSTRUCTIONS)


def structured_image(atoms: list[bytes], rounds: int) -> bytes:
    """``mov ecx, rounds; 1: atoms; dec ecx; jnz 1b; hlt``: the atoms leave ecx alone (junk may not)."""
    body = b"".join(atoms)
    back = -(len(body) + 2 + 6)  # dec ecx (2 bytes) + jnz rel32 (6 bytes)
    return (b"\xb9" + rounds.to_bytes(4, "little") + body + b"\xff\xc9"
            + b"\x0f\x85" + back.to_bytes(4, "little", signed=True) + b"\xf4")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from([Mode.PROTECTED, Mode.LONG]), st.lists(ATOMS, min_size=20, max_size=200),
       st.integers(1, 50), st.integers(1, 3))
def test_structured_images_with_port_io_and_mmio_end_in_a_classified_outcome(mode, atoms, rounds, vcpus):
    # Every vCPU runs the same mix (the control device's commands race between them), so the shadow
    # mirrors registrations made at random while other vCPUs exit at random addresses.
    t0 = time.monotonic()
    report = run(structured_image(atoms, rounds), mode, vcpus=vcpus)
    assert_classified(report, t0)


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
