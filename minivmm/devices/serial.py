"""A minimal 16550-style UART: enough for a guest to print (THR to the console, LSR "transmitter empty").

Register offsets are those of the 8250/16550 (offset 0 THR/RBR or DLL when LCR.DLAB is set, 1 IER or DLM,
2 IIR/FCR, 3 LCR, 4 MCR, 5 LSR, 6 MSR, 7 SCR). There is no receive path and no interrupts: the transmitter
is always empty, so a guest that polls LSR before each byte never waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from minivmm.devices.bus import store_into
from minivmm.devices.console import Console

COM1_PORT = 0x3F8
UART_REGISTERS = 8

THR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
LCR_DLAB = 0x80
LSR_THRE = 0x20  # transmit holding register empty
LSR_TEMT = 0x40  # transmitter empty
IIR_NO_INTERRUPT = 0x01
#: The registers whose write is a plain store of the byte (THR and IER depend on LCR.DLAB; LSR is
#: read-only; a write at IIR's offset is FCR, which this UART ignores).
STORED_REGISTERS = frozenset((LCR, MCR, MSR, SCR))


class Serial16550:
    """COM1-style UART at 8 consecutive ports."""

    name = "serial"

    def __init__(self, console: Console) -> None:
        self.console = console
        self._lock = threading.Lock()
        self._regs = bytearray(UART_REGISTERS)
        self._divisor = bytearray(2)

    def read(self, offset: int, size: int) -> bytes:
        """Read a register (a wider access reads consecutive registers)."""
        return bytes(self._read_reg(offset + i) for i in range(size))

    def _read_reg(self, reg: int) -> int:
        if reg >= UART_REGISTERS:
            return 0
        with self._lock:
            if reg in (THR, IER) and self._regs[LCR] & LCR_DLAB:
                return self._divisor[reg]
            if reg == LSR:
                return LSR_THRE | LSR_TEMT
            if reg == IIR:
                return IIR_NO_INTERRUPT
            if reg == THR:
                return 0  # no receive path: RBR always reads empty
            return self._regs[reg]

    def write(self, offset: int, data: bytes) -> None:
        """Write registers (a wider access writes consecutive registers); a THR write prints the byte."""
        if len(data) == 1:  # nearly every access: no loop
            self._write_reg(offset, data[0])
            return
        for i, value in enumerate(data):
            self._write_reg(offset + i, value)

    def _write_reg(self, reg: int, value: int) -> None:
        if reg == THR or reg == IER:  # what these mean depends on LCR.DLAB: decided under the lock
            with self._lock:
                if self._regs[LCR] & LCR_DLAB:
                    self._divisor[reg] = value
                    return
                if reg == IER:
                    self._regs[IER] = value
                    return
            self.console.put(bytes((value,)))  # outside the lock: the console has its own
            return
        if reg in STORED_REGISTERS:
            self._regs[reg] = value  # one byte store, atomic under the GIL: no lock needed

    def direct_writer(self, offset: int, size: int) -> Callable[[bytes], object] | None:
        """A one-byte write of a stored register as a bound store of that byte (what ``_write_reg`` does,
        with no Python frame: a guest's loop on the scratch register exits on every write); None for
        anything else."""
        if size == 1 and offset in STORED_REGISTERS:
            return store_into(self._regs, offset, 1)
        return None

    def direct_reader(self, offset: int, size: int) -> Callable[[], bytes] | None:
        """None: reads take the register lock (DLAB decides what THR and IER read)."""
        return None
