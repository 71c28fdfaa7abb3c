"""A plain MMIO scratch device: a few bytes of device memory a guest can write and read back."""

from __future__ import annotations

from collections.abc import Callable

from minivmm.devices.bus import copy_from, store_into

SCRATCH_SIZE = 0x1000


class Scratch:
    """Byte-addressable device memory of ``size`` bytes; reads return what was last written.

    No lock: a read copies and a write stores a slice of the bytearray in one C call each, which the
    GIL makes atomic, so concurrent vCPUs never see a torn access (and the exit path, which every MMIO
    loop takes, pays no lock). For the same reason every access can be a direct handler (see
    ``DirectAccess``): the exit path reaches this memory without a Python frame.
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

    def direct_writer(self, offset: int, size: int) -> Callable[[bytes], object]:
        """``write(offset, data)`` for ``size`` bytes of data: the same slice store, bound."""
        return store_into(self._mem, offset, size)

    def direct_reader(self, offset: int, size: int) -> Callable[[], bytes]:
        """``read(offset, size)``: the same copy, bound."""
        return copy_from(self._mem, offset, size)
