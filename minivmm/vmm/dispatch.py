"""The exit dispatcher: the one ``match`` over decoded exits, free of KVM so tests drive it directly.

PIO and MMIO go to the same :class:`~minivmm.devices.bus.Bus` implementation (a port bus and an MMIO
bus). Reads are answered through the ``completer`` (the vCPU, or a test double) before the next KVM_RUN.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Protocol

from minivmm.devices.bus import Bus, BusTable, resolve_in
from minivmm.kvm.exits import (EXIT_TYPES, FailEntry, Hlt, InternalError, Interrupted, IoIn, IoOut, MmioRead,
                               MmioWrite, Shutdown, SystemEvent, Unsupported, VcpuExit)


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


@dataclass
class UnclaimedAccess:
    """An access no device claimed (kept for the report; only the first few are kept)."""

    space: str  # "pio" or "mmio"
    addr: int
    size: int
    is_write: bool


@dataclass
class DispatchStats:
    """Per-vCPU counters; each vCPU owns one, so the hot path takes no lock."""

    unclaimed: int = 0
    first_unclaimed: list[UnclaimedAccess] = field(default_factory=list)

    def note_unclaimed(self, space: str, addr: int, size: int, is_write: bool) -> None:
        """Count an unclaimed access, keeping the first few for the report."""
        self.unclaimed += 1
        if len(self.first_unclaimed) < 8:
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


#: A device's bound read and write and the offset of an access within its range: what a bus lookup
#: answers, ready to call.
Route = tuple[Callable[[int, int], bytes], Callable[[int, bytes], None], int]
_MISS = object()
#: Past this many remembered accesses a route table starts afresh: a guest walking ever-new MMIO
#: addresses cannot grow it without bound.
ROUTE_LIMIT = 4096


class RouteTable:
    """One vCPU's memo of a bus's answers: address and size -> the claiming device's bound handlers.

    Valid for one published version of the bus (the bus is copy-on-write: a change publishes a new
    table object), so it is emptied when the bus's table is no longer the one it was filled from. Every
    answer comes from the bus's one claim rule (:func:`~minivmm.devices.bus.resolve_in`); this only
    saves asking again. Not shared: each vCPU's dispatcher has its own, so no lock is taken.
    """

    __slots__ = ("bus", "_table", "_routes")

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._table: BusTable | None = None
        self._routes: dict[int, Route | None] = {}

    def lookup(self, addr: int, size: int) -> Route | None:
        """The route of an access of ``size`` bytes at ``addr`` on the bus as it is now, or None if unclaimed."""
        table = self.bus.table
        routes = self._routes
        if table is not self._table or len(routes) >= ROUTE_LIMIT:
            routes = self._routes = {}
            self._table = table
        key = addr << 4 | size  # size <= 8
        route = routes.get(key, _MISS)
        if route is _MISS:
            hit = resolve_in(table, addr, size)
            route = routes[key] = (hit[0].read, hit[0].write, hit[1]) if hit is not None else None
        return route  # type: ignore[return-value]


class ExitDispatcher:
    """Routes exits to the buses. ``strict`` makes an unclaimed access fail the vCPU.

    Make one per vCPU: each keeps its own :class:`RouteTable` per bus.
    """

    def __init__(self, pio_bus: Bus, mmio_bus: Bus, strict: bool = False) -> None:
        self.pio_bus = pio_bus
        self.mmio_bus = mmio_bus
        self.strict = strict
        self._pio = RouteTable(pio_bus).lookup
        self._mmio = RouteTable(mmio_bus).lookup
        # One dict lookup per exit, on the exit's type: the dispatch table is the whole "match". It is
        # built from the exit registry, so a kind with neither a route nor a verdict fails here, at
        # construction, not at its first exit.
        routes: dict[type[VcpuExit], Handler] = {
            IoOut: self._io_out, IoIn: self._io_in, MmioWrite: self._mmio_write, MmioRead: self._mmio_read}
        #: The handler of each exit type; the vCPU loop calls these directly (handle() is the same, plus
        #: a check that the value is an exit at all).
        self.handlers: dict[type[VcpuExit], Handler] = {
            cls: routes[cls] if cls in routes else _verdict(FIXED_VERDICTS[cls]) for cls in EXIT_TYPES}

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
        stats.note_unclaimed(space, addr, size, is_write)
        return Verdict.FAILED if self.strict else Verdict.CONTINUE

    def _io_out(self, e: IoOut, completer: Completer, stats: DispatchStats) -> Verdict:
        port, size, count, data = e
        route = self._pio(port, size)
        if route is None:
            return self._unclaimed(stats, "pio", port, size, True)
        _, write, offset = route
        if count == 1:
            write(offset, data)
        else:  # string I/O (rep outs): count items of size bytes, all to the same port
            for i in range(0, size * count, size):
                write(offset, data[i:i + size])
        return _CONTINUE

    def _io_in(self, e: IoIn, completer: Completer, stats: DispatchStats) -> Verdict:
        port, size, count = e
        route = self._pio(port, size)
        if route is None:
            completer.complete_io_in(bytes(size * count))
            return self._unclaimed(stats, "pio", port, size, False)
        read, _, offset = route
        completer.complete_io_in(read(offset, size) if count == 1
                                 else b"".join(read(offset, size) for _ in range(count)))
        return _CONTINUE

    def _mmio_write(self, e: MmioWrite, completer: Completer, stats: DispatchStats) -> Verdict:
        addr, data = e
        route = self._mmio(addr, len(data))
        if route is None:
            return self._unclaimed(stats, "mmio", addr, len(data), True)
        _, write, offset = route
        write(offset, data)
        return _CONTINUE

    def _mmio_read(self, e: MmioRead, completer: Completer, stats: DispatchStats) -> Verdict:
        addr, length = e
        route = self._mmio(addr, length)
        if route is None:
            completer.complete_mmio_read(bytes(length))
            return self._unclaimed(stats, "mmio", addr, length, False)
        read, _, offset = route
        completer.complete_mmio_read(read(offset, length))
        return _CONTINUE
