"""A plain MMIO scratch device: a few bytes of device memory a guest can write and read back."""

from __future__ import annotations

import threading

SCRATCH_SIZE = 0x1000


class Scratch:
    """Byte-addressable device memory of ``size`` bytes; reads return what was last written."""

    name = "scratch"

    def __init__(self, size: int = SCRATCH_SIZE) -> None:
        self.size = size
        self._mem = bytearray(size)
        self._lock = threading.Lock()
        self.reads = 0
        self.writes = 0

    def read(self, offset: int, size: int) -> bytes:
        """Return ``size`` bytes at ``offset``."""
        with self._lock:
            self.reads += 1
            return bytes(self._mem[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset``."""
        with self._lock:
            self.writes += 1
            self._mem[offset:offset + len(data)] = data
