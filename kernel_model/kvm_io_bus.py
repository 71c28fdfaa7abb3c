"""KVM's io buses (virt/kvm/kvm_main.c ``kvm_io_bus_*``, v6.18) and ioeventfds (virt/kvm/eventfd.c).

A bus is an immutable, sorted array of ranges; a change copies it, publishes the copy with
``rcu_assign_pointer()`` and frees the old one by the variant's rule (see :mod:`kernel_model.variants`).
Lookup is the kernel's: binary search with ``kvm_io_bus_cmp()``, back up to the first matching range,
then offer the access to each matching device in turn until one accepts it.

Every published bus carries a ``version`` (per bus index, from 0) so that an observed exit can be
judged against "the bus the kernel must have had".

Cost: the kernel copies the array on every change; the model records the change against the bus it
was made from and builds the array only when something looks a range up (the VMM's shadow, a reader's
access), so a prediction's registrations cost the same whatever the bus holds. The array, once built,
is the kernel's to the element: the same insertion rule, the same order (``insert_range``).
"""

from __future__ import annotations

import enum
import errno
from typing import NamedTuple, Protocol

#: virt/kvm/kvm_main.c / include/linux/kvm_host.h: devices per bus, ioeventfds not counted.
NR_IOBUS_DEVS = 1000


class KvmBus(enum.IntEnum):
    """``enum kvm_bus`` (include/linux/kvm_host.h), the buses this model uses."""

    KVM_MMIO_BUS = 0
    KVM_PIO_BUS = 1
    KVM_FAST_MMIO_BUS = 3


class KvmIoDevice(Protocol):
    """``struct kvm_io_device`` with its ops: ``write``/``read`` return True when the device takes the
    access (the kernel's 0) and False to decline it (-EOPNOTSUPP)."""

    name: str

    def write(self, addr: int, length: int, value: int) -> bool:
        """Offer a write; True if handled in the kernel."""
        ...

    def read(self, addr: int, length: int) -> bool:
        """Offer a read; True if handled in the kernel."""
        ...


class InKernelDevice:
    """An in-kernel device that takes every access in its range (PIC, IOAPIC, PIT, GIC, ...)."""

    __slots__ = ("name", "writes", "reads")

    def __init__(self, name: str) -> None:
        self.name = name
        self.writes = 0
        self.reads = 0

    def write(self, addr: int, length: int, value: int) -> bool:
        """Take the write."""
        self.writes += 1
        return True

    def read(self, addr: int, length: int) -> bool:
        """Take the read."""
        self.reads += 1
        return True


class Ioeventfd:
    """``struct _ioeventfd``: signals its eventfd on a matching guest write; never takes reads.

    ``length`` 0 matches a write of any length at exactly ``addr`` (KVM_CAP_IOEVENTFD_ANY_LENGTH);
    ``datamatch`` None is the wildcard (no KVM_IOEVENTFD_FLAG_DATAMATCH).
    """

    __slots__ = ("addr", "length", "datamatch", "pio", "signalled", "name")

    def __init__(self, addr: int, length: int, datamatch: int | None = None, pio: bool = False,
                 name: str = "ioeventfd") -> None:
        self.addr = addr
        self.length = length
        self.datamatch = datamatch
        self.pio = pio
        self.signalled = 0
        self.name = name

    def in_range(self, addr: int, length: int, value: int) -> bool:
        """Models ioeventfd_in_range(): exact address; any length if ours is 0; else same length and
        (wildcard or the value, truncated to the access length, equals datamatch)."""
        if addr != self.addr:
            return False
        if not self.length:
            return True
        if length != self.length:
            return False
        if self.datamatch is None:
            return True
        return (value & ((1 << (8 * length)) - 1)) == self.datamatch

    def write(self, addr: int, length: int, value: int) -> bool:
        """Models ioeventfd_write(): signal the eventfd if the write matches."""
        if not self.in_range(addr, length, value):
            return False
        self.signalled += 1
        return True

    def read(self, addr: int, length: int) -> bool:
        """ioeventfds have no read op: a read always goes on (and, with nothing else, exits)."""
        return False

    def collides_with(self, other: Ioeventfd) -> bool:
        """Models ioeventfd_check_collision(): same bus, address and length (or either any-length),
        and either a wildcard or equal datamatch."""
        return (self.pio == other.pio and self.addr == other.addr
                and (not self.length or not other.length or self.length == other.length)
                and (self.datamatch is None or other.datamatch is None or self.datamatch == other.datamatch))


class KvmIoRange(NamedTuple):
    """``struct kvm_io_range``."""

    addr: int
    len: int
    dev: KvmIoDevice


class KvmIoBus:
    """``struct kvm_io_bus``: an immutable sorted array; ``freed`` is set by kfree().

    Made from another bus by one change (``insert_range``/``remove_range``), it keeps that bus and the
    change until its array is first read (``range``)."""

    __slots__ = ("bus_idx", "version", "_range", "_base", "_change", "dev_count", "ioeventfd_count",
                 "freed", "freed_at")

    def __init__(self, bus_idx: KvmBus, version: int, range: tuple[KvmIoRange, ...] = (),  # noqa: A002
                 ioeventfd_count: int = 0) -> None:
        self.bus_idx = bus_idx
        self.version = version
        self._range: tuple[KvmIoRange, ...] | None = range
        self._base: KvmIoBus | None = None
        self._change: KvmIoRange | KvmIoDevice | None = None  # a range inserted, or a device removed
        #: Number of ranges on the bus.
        self.dev_count = len(range)
        self.ioeventfd_count = ioeventfd_count
        self.freed = False
        self.freed_at: int | None = None

    @classmethod
    def changed(cls, base: KvmIoBus, version: int, change: KvmIoRange | KvmIoDevice, dev_count: int,
                ioeventfd_count: int) -> KvmIoBus:
        """The bus ``base`` becomes with one change: a KvmIoRange inserted, or a device removed."""
        bus = cls(base.bus_idx, version, (), ioeventfd_count)
        bus._range, bus._base, bus._change, bus.dev_count = None, base, change, dev_count
        return bus

    @property
    def range(self) -> tuple[KvmIoRange, ...]:
        """The array (the kernel's field name), built on first use from the nearest built ancestor."""
        if self._range is None:
            chain: list[KvmIoBus] = []
            bus: KvmIoBus = self
            while bus._range is None:
                chain.append(bus)
                assert bus._base is not None
                bus = bus._base
            ranges = bus._range
            for b in reversed(chain):
                ranges = _apply(ranges, b._change)
            self._range, self._base, self._change = ranges, None, None
        return self._range


def _apply(ranges: tuple[KvmIoRange, ...], change: KvmIoRange | KvmIoDevice | None) -> tuple[KvmIoRange, ...]:
    """One recorded change applied to an array."""
    if isinstance(change, KvmIoRange):
        i = _insertion_index(ranges, change)
        return ranges[:i] + (change,) + ranges[i:]
    for i, r in enumerate(ranges):
        if r.dev is change:
            return ranges[:i] + ranges[i + 1:]
    raise AssertionError("removing a device that is not on the bus")


def _insertion_index(ranges: tuple[KvmIoRange, ...], new: KvmIoRange) -> int:
    """kvm_io_bus_register_dev()'s insertion point: the first range that compares greater than the new
    one (``kvm_io_bus_cmp(&bus->range[i], &range) > 0``), by the kernel's linear scan. (With nested
    ranges the array is not in address order, so no shortcut is taken.)"""
    return next((k for k, r in enumerate(ranges) if kvm_io_bus_cmp(r.addr, r.len, new.addr, new.len) > 0),
                len(ranges))


def kvm_io_bus_cmp(r1_addr: int, r1_len: int, r2_addr: int, r2_len: int) -> int:
    """Models kvm_io_bus_cmp(r1, r2). With r1 an access and r2 a bus range it is 0 ("match") when the
    access lies inside the range, or, for a zero-length range, starts exactly at its address."""
    addr1, addr2 = r1_addr, r2_addr
    if addr1 < addr2:
        return -1
    if r2_len:
        addr1 += r1_len
        addr2 += r2_len
    if addr1 > addr2:
        return 1
    return 0


def bsearch(bus: KvmIoBus, addr: int, length: int) -> int:
    """Models lib/bsearch.c on the bus with kvm_io_bus_sort_cmp(key, range): the index of *a*
    matching range, or -1. (With overlapping ranges of different extents the comparison is not
    monotonic and the kernel's bsearch can miss a match; so does this.)"""
    base, num = 0, bus.dev_count
    while num > 0:
        pivot = base + (num >> 1)
        r = bus.range[pivot]
        result = kvm_io_bus_cmp(addr, length, r.addr, r.len)
        if result == 0:
            return pivot
        if result > 0:
            base = pivot + 1
            num -= 1
        num >>= 1
    return -1


def kvm_io_bus_get_first_dev(bus: KvmIoBus, addr: int, length: int) -> int:
    """Models kvm_io_bus_get_first_dev(): bsearch, then walk back to the first matching range;
    -ENOENT if none matches."""
    off = bsearch(bus, addr, length)
    if off < 0:
        return -errno.ENOENT
    while off > 0 and kvm_io_bus_cmp(addr, length, bus.range[off - 1].addr, bus.range[off - 1].len) == 0:
        off -= 1
    return off


def __kvm_io_bus_write(bus: KvmIoBus, addr: int, length: int, value: int) -> tuple[int, KvmIoDevice | None]:
    """Models __kvm_io_bus_write(): offer the write to each matching device from the first; return
    (index, device) of the one that took it, or (-EOPNOTSUPP, None)."""
    idx = kvm_io_bus_get_first_dev(bus, addr, length)
    if idx < 0:
        return -errno.EOPNOTSUPP, None
    while idx < bus.dev_count and kvm_io_bus_cmp(addr, length, bus.range[idx].addr, bus.range[idx].len) == 0:
        if bus.range[idx].dev.write(addr, length, value):
            return idx, bus.range[idx].dev
        idx += 1
    return -errno.EOPNOTSUPP, None


def __kvm_io_bus_read(bus: KvmIoBus, addr: int, length: int) -> tuple[int, KvmIoDevice | None]:
    """Models __kvm_io_bus_read(): like the write path, for reads."""
    idx = kvm_io_bus_get_first_dev(bus, addr, length)
    if idx < 0:
        return -errno.EOPNOTSUPP, None
    while idx < bus.dev_count and kvm_io_bus_cmp(addr, length, bus.range[idx].addr, bus.range[idx].len) == 0:
        if bus.range[idx].dev.read(addr, length):
            return idx, bus.range[idx].dev
        idx += 1
    return -errno.EOPNOTSUPP, None


def offered_devices(bus: KvmIoBus, addr: int, length: int) -> tuple[KvmIoDevice, ...]:
    """The devices __kvm_io_bus_write() / __kvm_io_bus_read() offer an access of ``length`` bytes at
    ``addr`` to, in the order they offer it: from kvm_io_bus_get_first_dev() on, while the range still
    matches (empty if the lookup finds none, which with the bsearch quirk can happen although a range
    matches). Not a kernel function: the walk the kernel's two functions share, without the offers,
    so that a caller can ask which device takes an access without side effects."""
    idx = kvm_io_bus_get_first_dev(bus, addr, length)
    if idx < 0:
        return ()
    devs = []
    while idx < bus.dev_count and kvm_io_bus_cmp(addr, length, bus.range[idx].addr, bus.range[idx].len) == 0:
        devs.append(bus.range[idx].dev)
        idx += 1
    return tuple(devs)


def first_taker(devices: tuple[KvmIoDevice, ...], addr: int, length: int, value: int = 0,
                is_write: bool = True) -> KvmIoDevice | None:
    """Of the ``devices`` an access is offered to (see :func:`offered_devices`), the one that takes it,
    without side effects: an in-kernel device takes any access, an ioeventfd only a write that
    ioeventfd_in_range() matches (it has no read op)."""
    for dev in devices:
        if isinstance(dev, Ioeventfd):
            if is_write and dev.in_range(addr, length, value):
                return dev
        elif isinstance(dev, InKernelDevice):
            return dev
    return None


def claimant(bus: KvmIoBus, addr: int, length: int, value: int = 0, is_write: bool = True) -> KvmIoDevice | None:
    """Which device would take this access on ``bus``, without side effects (no eventfd is signalled).

    This is the query the VMM's shadow asks for every exit (through a per-version cache of
    :func:`offered_devices`).
    """
    return first_taker(offered_devices(bus, addr, length), addr, length, value, is_write)


def insert_range(bus: KvmIoBus, new: KvmIoRange, version: int) -> KvmIoBus:
    """The copy step of kvm_io_bus_register_dev(): a new bus with ``new`` inserted before the first
    range that compares greater (``kvm_io_bus_cmp(&bus->range[i], &range) > 0``)."""
    return KvmIoBus.changed(bus, version, new, bus.dev_count + 1,
                            bus.ioeventfd_count + (1 if isinstance(new.dev, Ioeventfd) else 0))


def remove_range(bus: KvmIoBus, dev: KvmIoDevice, version: int) -> KvmIoBus:
    """The copy step of kvm_io_bus_unregister_dev(): a new bus without ``dev``, which the caller knows
    to be on ``bus`` (the kernel's own search for it finds it)."""
    return KvmIoBus.changed(bus, version, dev, bus.dev_count - 1,
                            bus.ioeventfd_count - (1 if isinstance(dev, Ioeventfd) else 0))
