"""The exit dispatcher with synthetic exits and a fake vCPU (no KVM needed)."""

from __future__ import annotations

import pytest

from minivmm.devices.bus import Bus
from minivmm.devices.console import Console
from minivmm.devices.serial import COM1_PORT, Serial16550
from minivmm.kvm.exits import (
    HLT,
    INTERRUPTED,
    FailEntry,
    InternalError,
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Shutdown,
    SystemEvent,
    Unsupported,
)
from minivmm.vmm.dispatch import DispatchStats, ExitDispatcher, Verdict


class FakeVcpu:
    def __init__(self) -> None:
        self.io_in: list[bytes] = []
        self.mmio_in: list[bytes] = []

    def complete_io_in(self, data: bytes) -> None:
        self.io_in.append(data)

    def complete_mmio_read(self, data: bytes) -> None:
        self.mmio_in.append(data)


class Recorder:
    name = "rec"

    def __init__(self) -> None:
        self.writes: list[tuple[int, bytes]] = []

    def read(self, offset: int, size: int) -> bytes:
        return bytes([offset & 0xFF]) * size

    def write(self, offset: int, data: bytes) -> None:
        self.writes.append((offset, data))


@pytest.fixture
def setup():
    pio, mmio = Bus("pio", 1 << 16), Bus("mmio", 1 << 64)
    rec_pio, rec_mmio = Recorder(), Recorder()
    pio.insert(rec_pio, 0x80, 4)
    mmio.insert(rec_mmio, 0xD0000000, 0x100)
    return ExitDispatcher(pio, mmio), rec_pio, rec_mmio, FakeVcpu(), DispatchStats()


def test_pio_out_reaches_device_at_offset(setup):
    d, rec, _, vcpu, stats = setup
    assert d.handle(IoOut(0x82, 1, 1, b"x"), vcpu, stats) is Verdict.CONTINUE
    assert rec.writes == [(2, b"x")]


def test_string_out_is_split_into_items(setup):
    d, rec, _, vcpu, stats = setup
    d.handle(IoOut(0x80, 2, 3, b"aabbcc"), vcpu, stats)
    assert rec.writes == [(0, b"aa"), (0, b"bb"), (0, b"cc")]


def test_pio_in_answers_each_item(setup):
    d, _, _, vcpu, stats = setup
    d.handle(IoIn(0x81, 1, 3), vcpu, stats)
    assert vcpu.io_in == [b"\x01\x01\x01"]


def test_mmio_both_ways(setup):
    d, _, rec, vcpu, stats = setup
    d.handle(MmioWrite(0xD0000010, b"\x01\x02\x03\x04"), vcpu, stats)
    d.handle(MmioRead(0xD0000020, 2), vcpu, stats)
    assert rec.writes == [(0x10, b"\x01\x02\x03\x04")]
    assert vcpu.mmio_in == [b"\x20\x20"]


def test_unclaimed_reads_return_zeros_and_are_counted(setup):
    d, _, _, vcpu, stats = setup
    assert d.handle(IoIn(0x60, 2, 1), vcpu, stats) is Verdict.CONTINUE
    assert d.handle(MmioRead(0xE0000000, 8), vcpu, stats) is Verdict.CONTINUE
    assert d.handle(MmioWrite(0xE0000000, b"\xff"), vcpu, stats) is Verdict.CONTINUE
    assert vcpu.io_in == [b"\0\0"] and vcpu.mmio_in == [bytes(8)]
    assert stats.unclaimed == 3
    assert [(u.space, u.addr, u.is_write) for u in stats.first_unclaimed] == [
        ("pio", 0x60, False), ("mmio", 0xE0000000, False), ("mmio", 0xE0000000, True)]


def test_strict_makes_unclaimed_fatal(setup):
    d, _, _, vcpu, stats = setup
    d.strict = True
    assert d.handle(IoOut(0x60, 1, 1, b"x"), vcpu, stats) is Verdict.FAILED
    assert d.handle(IoIn(0x80, 1, 1), vcpu, stats) is Verdict.CONTINUE  # claimed accesses still fine


@pytest.mark.parametrize("exit_,verdict", [
    (HLT, Verdict.HALTED), (INTERRUPTED, Verdict.INTERRUPTED), (Shutdown(), Verdict.FAILED),
    (FailEntry(1, 0), Verdict.FAILED), (InternalError(1, ()), Verdict.FAILED),
    (SystemEvent(1, ()), Verdict.FAILED), (Unsupported(4), Verdict.FAILED)])
def test_terminal_exits(setup, exit_, verdict):
    d, _, _, vcpu, stats = setup
    assert d.handle(exit_, vcpu, stats) is verdict


def test_not_an_exit_is_a_programming_error(setup):
    d, _, _, vcpu, stats = setup
    with pytest.raises(TypeError):
        d.handle("HLT", vcpu, stats)  # type: ignore[arg-type]


def test_serial_through_the_dispatcher():
    console = Console()
    pio = Bus("pio", 1 << 16)
    pio.insert(Serial16550(console), COM1_PORT, 8)
    d, vcpu, stats = ExitDispatcher(pio, Bus("mmio", 1 << 64)), FakeVcpu(), DispatchStats()
    d.handle(IoIn(COM1_PORT + 5, 1, 1), vcpu, stats)
    d.handle(IoOut(COM1_PORT, 1, 1, b"o"), vcpu, stats)
    d.handle(IoOut(COM1_PORT, 1, 2, b"k\n"), vcpu, stats)
    assert vcpu.io_in == [b"\x60"]
    assert console.output == b"ok\n"
