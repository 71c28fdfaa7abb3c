"""The guests in guest/ on real KVM: exact console output and exact exit sequences."""

from __future__ import annotations

import pytest

from minivmm.cli.errors import outcome_exit_code
from minivmm.kvm.exits import HLT, IoIn, IoOut, MmioRead, MmioWrite
from minivmm.vmm.boot import Mode
from minivmm.vmm.report import RunOutcome

pytestmark = pytest.mark.kvm

GREETING = "Hello from a minivmm guest!\n"


def string_out(port: int, text: str) -> list[object]:
    """The exits of ``rep outsb`` of ``text``: KVM emulates OUTS one iteration per exit."""
    return [IoOut(port, 1, 1, bytes([b])) for b in text.encode()]


def test_hello(boot, guest_image):
    report, log = boot(guest_image("hello"))
    assert report.outcome is RunOutcome.HALTED and outcome_exit_code(report.outcome) == 0
    assert report.console == GREETING
    expected = []
    for b in GREETING.encode():
        expected += [IoIn(0x3FD, 1, 1), IoOut(0x3F8, 1, 1, bytes([b]))]
    assert log.of(0) == expected + [HLT]
    assert report.exits == {"io_in": 28, "io_out": 28, "hlt": 1}


def test_hello_on_four_vcpus_prints_once(boot, guest_image):
    report, log = boot(guest_image("hello"), vcpus=4)
    assert report.outcome is RunOutcome.HALTED
    assert report.console == GREETING
    for vcpu in (1, 2, 3):
        assert log.of(vcpu) == [HLT]
    assert [v.state for v in report.vcpus] == ["halted"] * 4


@pytest.mark.parametrize("name,mode,prefix,scratch_writes", [
    ("mmio", Mode.PROTECTED, "mmio", [(0xD0000000, b"\x5a"), (0xD0000002, b"\xef\xbe"),
                                      (0xD0000004, b"\xef\xbe\xad\xde")]),
    ("long", Mode.LONG, "long", [(0xD0000000, b"\x5a"), (0xD0000002, b"\xef\xbe"),
                                 (0xD0000004, b"\xef\xbe\xad\xde"),
                                 (0xD0000008, bytes.fromhex("efcdab8967452301"))]),
])
def test_mmio_guests(boot, guest_image, name, mode, prefix, scratch_writes):
    report, log = boot(guest_image(name), mode=mode)
    assert report.outcome is RunOutcome.HALTED
    assert report.console == f"{prefix}: scratch ok\n{prefix}: doorbell ok\n"
    expected = [MmioWrite(a, d) for a, d in scratch_writes]
    expected += [MmioRead(a, len(d)) for a, d in scratch_writes]
    expected += string_out(0xE9, f"{prefix}: scratch ok\n")
    expected += [MmioRead(0xD0001000, 4)]  # the three doorbell writes never exit
    expected += string_out(0xE9, f"{prefix}: doorbell ok\n")
    assert log.of(0) == expected + [HLT]
    assert report.doorbell_kernel_writes == 3
    assert report.doorbell_userspace_writes == 0


def test_long_guest_on_two_vcpus(boot, guest_image):
    report, _ = boot(guest_image("long"), mode=Mode.LONG, vcpus=2)
    assert report.outcome is RunOutcome.HALTED
    assert report.console == "long: scratch ok\nlong: doorbell ok\n"


def test_mmioloop(boot, guest_image):
    report, log = boot(guest_image("mmioloop"), mode=Mode.PROTECTED, vcpus=2)
    assert report.outcome is RunOutcome.HALTED and report.console == ""
    expected = []
    for n in range(50000, 0, -1):
        expected += [MmioWrite(0xD0000000, n.to_bytes(4, "little")), MmioRead(0xD0000000, 4)]
    assert log.of(0) == expected + [HLT] and log.of(1) == [HLT]
    assert report.exits == {"mmio_write": 50000, "mmio_read": 50000, "hlt": 2}
