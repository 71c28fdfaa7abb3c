"""Device models on their own: serial registers, debug console, scratch memory, console bounds."""

from __future__ import annotations

import io

from minivmm.devices.console import Console
from minivmm.devices.debugcon import DebugCon
from minivmm.devices.scratch import Scratch
from minivmm.devices.serial import LCR, LCR_DLAB, LSR, LSR_TEMT, LSR_THRE, SCR, THR, Serial16550


def test_serial_prints_thr_and_reports_transmitter_empty():
    c = Console()
    s = Serial16550(c)
    assert s.read(LSR, 1)[0] & (LSR_THRE | LSR_TEMT) == LSR_THRE | LSR_TEMT
    s.write(THR, b"h")
    s.write(THR, b"i")
    assert c.output == b"hi"


def test_serial_divisor_latch_does_not_print():
    c = Console()
    s = Serial16550(c)
    s.write(LCR, bytes([LCR_DLAB | 0x03]))
    s.write(THR, b"\x01")   # DLL
    s.write(THR + 1, b"\x00")  # DLM
    assert c.output == b""
    assert s.read(THR, 1) == b"\x01"
    s.write(LCR, b"\x03")
    s.write(THR, b"x")
    assert c.output == b"x"


def test_serial_scratch_register_round_trips():
    s = Serial16550(Console())
    s.write(SCR, b"\xa5")
    assert s.read(SCR, 1) == b"\xa5"


def test_debugcon():
    c = Console()
    d = DebugCon(c)
    d.write(0, b"A")
    assert c.output == b"A"
    assert d.read(0, 1) == b"\xe9"


def test_scratch_sizes():
    s = Scratch()
    s.write(4, b"\xef\xbe\xad\xde")
    assert s.read(4, 4) == b"\xef\xbe\xad\xde"
    assert s.read(5, 2) == b"\xbe\xad"
    assert s.read(0, 8)[:4] == bytes(4)


def test_console_echoes_and_bounds_a_flood():
    out = io.BytesIO()
    c = Console(out, capture_limit=10)
    c.put(b"hello\n")
    c.put(b"0123456789")
    assert c.output == b"hello\n0123"
    assert c.dropped == 6 + 0  # "456789"
    assert out.getvalue() == b"hello\n0123"
    c.put(b"more")
    assert c.dropped == 10


def test_direct_handlers_do_what_the_device_methods_do():
    """A device's direct handler (what the exit dispatcher binds instead of a Python method) must
    leave the device exactly as ``write`` would and answer exactly what ``read`` would."""
    direct, plain = Scratch(0x40), Scratch(0x40)
    for offset, data in ((0, b"\x01"), (3, b"\x02\x03"), (8, b"abcd"), (0x38, bytes(range(8)))):
        writer = direct.direct_writer(offset, len(data))
        writer(data)
        plain.write(offset, data)
        assert direct.read(0, 0x40) == plain.read(0, 0x40)
        assert direct.direct_reader(offset, len(data))() == plain.read(offset, len(data)) == data
    reader = direct.direct_reader(8, 4)
    direct.write(8, b"WXYZ")
    assert reader() == b"WXYZ"  # a bound reader reads the memory as it is at each call

    uart = Serial16550(Console())
    for reg in range(8):
        handler = uart.direct_writer(reg, 1)
        if reg in (THR, 1, 2, LSR):  # THR/IER depend on DLAB, IIR's offset is FCR, LSR is read-only
            assert handler is None
            continue
        assert handler is not None
        handler(b"\xa5")
        assert uart.read(reg, 1) == b"\xa5"
    assert uart.direct_writer(SCR - 1, 2) is None  # wider accesses go through write()
    assert uart.direct_reader(SCR, 1) is None
