"""One bus implementation, used twice: once for port I/O, once for MMIO ("they are not really different").

Ranges are kept sorted and looked up by bisection. Like the kernel's ``kvm_io_bus``, the bus is
copy-on-write: a change builds a new sorted tuple and publishes it with one assignment, so vCPU threads
look devices up without taking a lock; changes are serialised by ``_lock``.

Lock ordering: ``Bus._lock`` is only held while the range table is rebuilt, never while a device runs.
Devices that keep state take their own lock inside ``read``/``write``.
"""

from __future__ import annotations

import bisect
import operator
import threading
from collections.abc import Callable
from functools import partial
from typing import NamedTuple, Protocol


class BusDevice(Protocol):
    """What a device on a bus implements. ``offset`` is relative to the base of the device's range."""

    name: str

    def read(self, offset: int, size: int) -> bytes:
        """Return ``size`` bytes read at ``offset``."""
        ...

    def write(self, offset: int, data: bytes) -> None:
        """Handle a write of ``data`` at ``offset``."""
        ...


class DirectAccess(Protocol):
    """What a device may add to :class:`BusDevice`: for one access (``offset`` and ``size``), a handler
    that runs no Python code, or None where the access needs the device's own ``read``/``write``.

    The exit dispatcher binds one handler per access it routes (see ``minivmm.vmm.dispatch``): a
    device method is a Python frame on every exit that reaches it, which on the exit path (caches
    cold after the guest ran) costs a good part of what minivmm adds to an exit. A direct handler
    does exactly what ``write(offset, data)`` (for ``data`` of ``size`` bytes) or ``read(offset,
    size)`` would, as C calls only (:func:`store_into`, :func:`copy_from`).
    """

    def direct_writer(self, offset: int, size: int) -> Callable[[bytes], object] | None:
        """A handler equal to ``write(offset, data)`` for data of exactly ``size`` bytes, or None."""
        ...

    def direct_reader(self, offset: int, size: int) -> Callable[[], bytes] | None:
        """A handler equal to ``read(offset, size)``, or None."""
        ...


def store_into(memory: bytearray, offset: int, size: int) -> Callable[[bytes], object]:
    """A direct writer: ``memory[offset:offset + size] = data``, for data of exactly ``size`` bytes (any
    other length raises ValueError: the memory never changes size).

    ``operator.setitem`` on a view made once: the view takes the bytes as they are (a bytearray's own
    slice store first copies them into a new bytearray) and the call passes its arguments without
    building a tuple (a bound ``__setitem__`` builds one). The view pins ``memory``'s size.
    """
    return partial(operator.setitem, memoryview(memory)[offset:offset + size], slice(None))


def copy_from(memory: bytearray, offset: int, size: int) -> Callable[[], bytes]:
    """A direct reader: ``bytes(memory[offset:offset + size])`` as they are at each call (a view's
    ``tobytes``, bound once)."""
    return memoryview(memory)[offset:offset + size].tobytes


class BusError(ValueError):
    """A range could not be inserted into or removed from a bus."""


class ZeroSizedRange(BusError):
    """A device range of length 0 was given: it could never be accessed."""


class RangeOutOfBounds(BusError):
    """A device range goes past the end of the bus's address space (64 KiB of ports, 2^64 of MMIO)."""


class Overlap(BusError):
    """A device range overlaps a range already on the bus."""


class NoSuchRange(BusError):
    """No device range starts at the given address."""


class BusRange(NamedTuple):
    """``[base, base + length)`` on a bus, with the device that claims it."""

    base: int
    length: int
    device: BusDevice

    @property
    def end(self) -> int:
        """One past the last address of the range."""
        return self.base + self.length


#: One published version of a bus: the sorted bases, and the ranges they start.
BusTable = tuple[tuple[int, ...], tuple[BusRange, ...]]


def resolve_in(table: BusTable, addr: int, size: int) -> tuple[BusDevice, int] | None:
    """The one claim rule, on one published version of a bus: ``(device, offset)`` for an access of
    ``size`` bytes at ``addr`` lying wholly inside one range, else None."""
    bases, ranges = table
    i = bisect.bisect_right(bases, addr) - 1
    if i < 0:
        return None
    r = ranges[i]
    if addr + size <= r.base + r.length:
        return r.device, addr - r.base
    return None


class Bus:
    """A set of non-overlapping device ranges in an address space of ``size`` addresses."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._lock = threading.Lock()
        #: The published table, (bases, ranges) in one attribute, so that a lock-free reader sees one
        #: whole version. Each change publishes a new tuple: a reader that cached a lookup keeps it for as
        #: long as ``table`` is the very object it was made from (the per-vCPU routes of ExitDispatcher).
        self.table: BusTable = ((), ())

    def insert(self, device: BusDevice, base: int, length: int) -> None:
        """Put ``device`` on ``[base, base + length)``; refuse empty, out-of-bounds or overlapping ranges."""
        if length <= 0:
            raise ZeroSizedRange(f"{self.name} bus: {device.name} at {base:#x} has length {length}")
        if base < 0 or base + length > self.size:
            raise RangeOutOfBounds(f"{self.name} bus: {device.name} [{base:#x}, {base + length:#x}) "
                                   f"is outside [0, {self.size:#x})")
        with self._lock:
            bases, ranges = self.table
            i = bisect.bisect_right(bases, base)
            for neighbour in ranges[max(i - 1, 0):i + 1]:
                if neighbour.base < base + length and base < neighbour.end:
                    raise Overlap(f"{self.name} bus: {device.name} [{base:#x}, {base + length:#x}) overlaps "
                                  f"{neighbour.device.name} [{neighbour.base:#x}, {neighbour.end:#x})")
            new = ranges[:i] + (BusRange(base, length, device),) + ranges[i:]
            self._publish(new)

    def remove(self, base: int) -> BusDevice:
        """Take the device whose range starts at ``base`` off the bus and return it."""
        with self._lock:
            bases, ranges = self.table
            i = bisect.bisect_left(bases, base)
            if i == len(bases) or bases[i] != base:
                raise NoSuchRange(f"{self.name} bus: no device range starts at {base:#x}")
            device = ranges[i].device
            self._publish(ranges[:i] + ranges[i + 1:])
            return device

    def _publish(self, ranges: tuple[BusRange, ...]) -> None:
        # One assignment: a reader sees the old table or the new one, never a mixture.
        self.table = (tuple(r.base for r in ranges), ranges)

    def resolve(self, addr: int, size: int = 1) -> tuple[BusDevice, int] | None:
        """Return ``(device, offset)`` for an access of ``size`` bytes at ``addr``, or None if unclaimed.

        An access must lie wholly inside one range to be claimed (as in the kernel's ``kvm_io_bus``).
        """
        return resolve_in(self.table, addr, size)

    def ranges(self) -> tuple[BusRange, ...]:
        """The current ranges, sorted by base."""
        return self.table[1]

    def __len__(self) -> int:
        return len(self.table[1])
