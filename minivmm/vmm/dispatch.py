"""The exit dispatcher: the one ``match`` over decoded exits, free of KVM so tests drive it directly.

PIO and MMIO go to the same :class:`~minivmm.devices.bus.Bus` implementation (a port bus and an MMIO
bus). Reads are answered through the ``completer`` (the vCPU, or a test double) before the next KVM_RUN.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple, Protocol

from minivmm.devices.bus import Bus, BusDevice, BusTable, resolve_in
from minivmm.kvm.exits import (
    EXIT_TYPES,
    FailEntry,
    Hlt,
    InternalError,
    Interrupted,
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Shutdown,
    SystemEvent,
    Unsupported,
    VcpuExit,
)


class Completer(Protocol):
    """Where the answers to guest reads go (``Vcpu`` implements it)."""

    def complete_io_in(self, data: bytes) -> None:
        """Answer a port read."""
        ...

    def complete_mmio_read(self, data: bytes) -> None:
        """Answer an MMIO read."""
        ...


class Verdict(enum.Enum):
    """What the vCPU loop does after an exit was handled."""

    CONTINUE = "continue"      # enter the guest again
    HALTED = "halted"          # the vCPU executed HLT: its run is over
    FAILED = "failed"          # shutdown, entry failure, internal error, strict-mode unclaimed access
    INTERRUPTED = "interrupted"  # KVM_RUN returned EINTR (timeout, Ctrl-C, or a kick)


_CONTINUE = Verdict.CONTINUE
#: Unclaimed accesses kept for the report, per vCPU (the rest are counted).
FIRST_UNCLAIMED_KEPT = 8


class UnclaimedAccess(NamedTuple):
    """An access no device claimed (kept for the report; only the first few are kept)."""

    space: str  # "pio" or "mmio"
    addr: int
    size: int
    is_write: bool


class DispatchStats:
    """Per-vCPU counters; each vCPU owns one, so the hot path takes no lock."""

    __slots__ = ("unclaimed", "first_unclaimed")

    def __init__(self) -> None:
        self.unclaimed = 0
        self.first_unclaimed: list[UnclaimedAccess] = []

    def note_unclaimed(self, space: str, addr: int, size: int, is_write: bool) -> None:
        """Count an unclaimed access, keeping the first few for the report."""
        self.unclaimed += 1
        if len(self.first_unclaimed) < FIRST_UNCLAIMED_KEPT:
            self.first_unclaimed.append(UnclaimedAccess(space, addr, size, is_write))


#: How an exit is handled: ``(exit, completer, stats) -> Verdict``.
Handler = Callable[[Any, Completer, DispatchStats], Verdict]

#: The exits whose handling does not depend on their data: what the vCPU loop does after each. The
#: exits with data (port I/O, MMIO) are routed to the buses by ExitDispatcher's methods.
FIXED_VERDICTS: dict[type[VcpuExit], Verdict] = {
    Hlt: Verdict.HALTED, Interrupted: Verdict.INTERRUPTED, Shutdown: Verdict.FAILED, FailEntry: Verdict.FAILED,
    InternalError: Verdict.FAILED, SystemEvent: Verdict.FAILED, Unsupported: Verdict.FAILED,
}


def _verdict(v: Verdict) -> Handler:
    def handler(exit_: VcpuExit, completer: Completer, stats: DispatchStats) -> Verdict:
        return v
    return handler


#: A device's handler bound to one access, ready to call: a write's takes the data, a read's nothing (it
#: returns the bytes read). The device's direct handler if it offers one (see ``DirectAccess``: no Python
#: frame at all), else ``functools.partial`` of the device's method with the offset (and a read's size)
#: bound: calling one runs no Python frame of its own before the method's.
Writer = Callable[[bytes], None]
Reader = Callable[[], bytes]
#: Past this many remembered accesses a route table starts afresh: a guest walking ever-new MMIO
#: addresses cannot grow it without bound.
ROUTE_LIMIT = 4096


class _Routes(dict):  # type: ignore[type-arg]  # int -> Writer | Reader | None; see RouteTable
    """The routes of one direction and one access size in a :class:`RouteTable`: ``routes[addr]`` is
    the bound handler, or None if unclaimed. A key not yet seen is resolved by ``__missing__`` (the
    dict's own miss path, so a hit costs one C-level lookup and no Python frame)."""

    __slots__ = ("table", "size", "bind")

    def __init__(self, table: BusTable, size: int, bind: Callable[[BusDevice, int, int], Any]) -> None:
        super().__init__()
        self.table = table
        self.size = size
        self.bind = bind

    def __missing__(self, addr: int) -> Any:
        size = self.size
        hit = resolve_in(self.table, addr, size)  # the bus's one claim rule, on the version this table is for
        route = self.bind(hit[0], hit[1], size) if hit is not None else None
        if len(self) >= ROUTE_LIMIT:
            self.clear()
        self[addr] = route
        return route


class _RoutesBySize(dict):  # type: ignore[type-arg]  # int -> _Routes
    """One direction's routes of a :class:`RouteTable`, by access size: ``by_size[size][addr]``. Two
    lookups rather than one on a combined key: an MMIO address shifted to make room for the size is
    a big int, which Python allocates (twice: the shift and the or) on every exit. Sizes come from
    ``kvm_run`` (1 to 8), so this holds a handful of tables."""

    __slots__ = ("table", "bind")

    def __init__(self, table: BusTable, bind: Callable[[BusDevice, int, int], Any]) -> None:
        super().__init__()
        self.table = table
        self.bind = bind

    def __missing__(self, size: int) -> _Routes:
        routes = self[size] = _Routes(self.table, size, self.bind)
        return routes


def _bind_write(device: BusDevice, offset: int, size: int) -> Writer:
    direct = getattr(device, "direct_writer", None)  # optional: see DirectAccess
    writer = direct(offset, size) if direct is not None else None
    return writer if writer is not None else partial(device.write, offset)


def _bind_read(device: BusDevice, offset: int, size: int) -> Reader:
    direct = getattr(device, "direct_reader", None)
    reader = direct(offset, size) if direct is not None else None
    return reader if reader is not None else partial(device.read, offset, size)


class RouteTable:
    """One vCPU's table from access (address and size) to the claiming device's bound handler, per bus.

    Valid for one published version of the bus: the bus is copy-on-write (a change publishes a new
    table object), so when ``bus.table`` is no longer the object the routes were filled from,
    :meth:`renew` starts them afresh for the new version, and they fill again as accesses come. Every
    answer comes from the bus's one claim rule (:func:`~minivmm.devices.bus.resolve_in`) on that
    version; this only saves asking again. Not shared: each vCPU's dispatcher has its own, so no lock
    is taken. ``writes[size][addr]`` and ``reads[size][addr]`` are the bound handler or None.
    """

    __slots__ = ("bus", "table", "writes", "reads")

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.renew()

    def renew(self) -> None:
        """Forget every route: from now on they are the bus's answers on its current version."""
        table = self.table = self.bus.table
        self.writes = _RoutesBySize(table, _bind_write)
        self.reads = _RoutesBySize(table, _bind_read)


class ExitDispatcher:
    """Routes exits to the buses. ``strict`` makes an unclaimed access fail the vCPU.

    Make one per vCPU: each keeps its own :class:`RouteTable` per bus. The handler of a bus exit is one
    Python frame: the route table's version check and lookup are inline, and the device's bound
    handler it finds is its direct handler (no frame) or a ``partial`` (no frame of its own before the
    device's method).
    """

    def __init__(self, pio_bus: Bus, mmio_bus: Bus, strict: bool = False) -> None:
        self.pio_bus = pio_bus
        self.mmio_bus = mmio_bus
        self.strict = strict
        self.pio_routes = RouteTable(pio_bus)
        self.mmio_routes = RouteTable(mmio_bus)
        # One dict lookup per exit, on the exit's type: the dispatch table is the whole "match". It is
        # built from the exit registry, so a kind with neither a route nor a verdict fails here, at
        # construction, not at its first exit.
        routes: dict[type[VcpuExit], Handler] = {
            IoOut: self._io_out, IoIn: self._io_in, MmioWrite: self._mmio_write, MmioRead: self._mmio_read}
        #: The handler of each exit type; the vCPU loop calls these directly (handle() is the same, plus
        #: a check that the value is an exit at all).
        self.handlers: dict[type[VcpuExit], Handler] = {
            cls: routes[cls] if cls in routes else _verdict(FIXED_VERDICTS[cls]) for cls in EXIT_TYPES}

    @property
    def strict(self) -> bool:
        """Whether an unclaimed access fails the vCPU (else it is counted and the vCPU goes on)."""
        return self._on_unclaimed is Verdict.FAILED

    @strict.setter
    def strict(self, value: bool) -> None:
        self._on_unclaimed = Verdict.FAILED if value else Verdict.CONTINUE

    def handled_types(self) -> frozenset[type[VcpuExit]]:
        """The exit types this dispatcher has a handler for (every one of EXIT_TYPES)."""
        return frozenset(self.handlers)

    def handle(self, exit_: VcpuExit, completer: Completer, stats: DispatchStats) -> Verdict:
        """Handle one exit; return what the vCPU loop should do next."""
        try:
            handler = self.handlers[type(exit_)]
        except KeyError:
            raise TypeError(f"not a VM exit: {exit_!r}") from None
        return handler(exit_, completer, stats)

    def _unclaimed(self, stats: DispatchStats, space: str, addr: int, size: int, is_write: bool) -> Verdict:
        if stats.unclaimed < FIRST_UNCLAIMED_KEPT:
            stats.note_unclaimed(space, addr, size, is_write)
        else:  # the first few are kept; past those counting is all (a loop's every exit may come here)
            stats.unclaimed += 1
        return self._on_unclaimed

    # The four bus handlers. Exits are indexed, not unpacked: unpacking a tuple subclass goes through
    # the generic iterator protocol. ``routes.table is not bus.table``: the bus published a new version
    # since the routes were filled (rare: a device came or went), so they start afresh.

    def _io_out(self, e: IoOut, completer: Completer, stats: DispatchStats) -> Verdict:
        routes = self.pio_routes
        if routes.table is not self.pio_bus.table:
            routes.renew()
        port, size = e[0], e[1]
        write = routes.writes[size][port]
        if write is None:
            if stats.unclaimed >= FIRST_UNCLAIMED_KEPT:  # past the kept few, counting is all (inline:
                stats.unclaimed += 1                     # a loop to an unclaimed port comes here each exit)
                return self._on_unclaimed
            return self._unclaimed(stats, "pio", port, size, True)
        data = e[3]
        if e[2] == 1:
            write(data)
        else:  # string I/O (rep outs): count items of size bytes, all to the same port
            for i in range(0, len(data), size):
                write(data[i:i + size])
        return _CONTINUE

    def _io_in(self, e: IoIn, completer: Completer, stats: DispatchStats) -> Verdict:
        routes = self.pio_routes
        if routes.table is not self.pio_bus.table:
            routes.renew()
        port, size, count = e[0], e[1], e[2]
        read = routes.reads[size][port]
        if read is None:
            completer.complete_io_in(bytes(size * count))
            return self._unclaimed(stats, "pio", port, size, False)
        completer.complete_io_in(read() if count == 1 else b"".join(read() for _ in range(count)))
        return _CONTINUE

    def _mmio_write(self, e: MmioWrite, completer: Completer, stats: DispatchStats) -> Verdict:
        routes = self.mmio_routes
        if routes.table is not self.mmio_bus.table:
            routes.renew()
        addr, data = e[0], e[1]
        write = routes.writes[len(data)][addr]
        if write is None:
            if stats.unclaimed >= FIRST_UNCLAIMED_KEPT:
                stats.unclaimed += 1
                return self._on_unclaimed
            return self._unclaimed(stats, "mmio", addr, len(data), True)
        write(data)
        return _CONTINUE

    def _mmio_read(self, e: MmioRead, completer: Completer, stats: DispatchStats) -> Verdict:
        routes = self.mmio_routes
        if routes.table is not self.mmio_bus.table:
            routes.renew()
        addr, length = e[0], e[1]
        read = routes.reads[length][addr]
        if read is None:
            completer.complete_mmio_read(bytes(length))
            return self._unclaimed(stats, "mmio", addr, length, False)
        completer.complete_mmio_read(read())
        return _CONTINUE
