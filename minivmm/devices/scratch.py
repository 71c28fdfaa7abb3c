"""A plain MMIO scratch device: a few bytes of device memory a guest can write and read back."""

from __future__ import annotations

SCRATCH_SIZE = 0x1000


class Scratch:
    """Byte-addressable device memory of ``size`` bytes; reads return what was last written.

    No lock: a read copies and a write stores a slice of the bytearray in one C call each, which the
    GIL makes atomic, so concurrent vCPUs never see a torn access (and the exit path, which every MMIO
    loop takes, pays no lock).
    """

    name = "scratch"

    def __init__(self, size: int = SCRATCH_SIZE) -> None:
        self.size = size
        self._mem = bytearray(size)

    def read(self, offset: int, size: int) -> bytes:
        """Return ``size`` bytes at ``offset``."""
        return bytes(self._mem[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset``."""
        self._mem[offset:offset + len(data)] = data
