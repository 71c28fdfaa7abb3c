"""The debug console on port 0xE9 (as in Bochs and QEMU's isa-debugcon): every byte written is printed."""

from __future__ import annotations

from minivmm.devices.console import Console

DEBUGCON_PORT = 0xE9
#: What a read returns: Bochs and QEMU answer 0xE9 so that a guest can detect the port.
DEBUGCON_READBACK = 0xE9


class DebugCon:
    """Port 0xE9: writes go to the console; reads return 0xE9 (the presence check guests use)."""

    name = "debugcon"

    def __init__(self, console: Console) -> None:
        self.console = console

    def read(self, offset: int, size: int) -> bytes:
        """Return 0xE9 in every byte read."""
        return bytes([DEBUGCON_READBACK]) * size

    def write(self, offset: int, data: bytes) -> None:
        """Print every written byte."""
        self.console.put(data)
