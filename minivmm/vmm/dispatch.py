"""The exit dispatcher: the one ``match`` over decoded exits, free of KVM so tests drive it directly.

PIO and MMIO go to the same :class:`~minivmm.devices.bus.Bus` implementation (a port bus and an MMIO
bus). Reads are answered through the ``completer`` (the vCPU, or a test double) before the next KVM_RUN.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Protocol

from minivmm.devices.bus import Bus
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


class ExitDispatcher:
    """Routes exits to the buses. ``strict`` makes an unclaimed access fail the vCPU."""

    def __init__(self, pio_bus: Bus, mmio_bus: Bus, strict: bool = False) -> None:
        self.pio_bus = pio_bus
        self.mmio_bus = mmio_bus
        self.strict = strict
        # One dict lookup per exit, on the exit's type: the dispatch table is the whole "match". It is
        # built from the exit registry, so a kind with neither a route nor a verdict fails here, at
        # construction, not at its first exit.
        routes: dict[type[VcpuExit], Handler] = {
            IoOut: self._io_out, IoIn: self._io_in, MmioWrite: self._mmio_write, MmioRead: self._mmio_read}
        self._handlers: dict[type[VcpuExit], Handler] = {
            cls: routes[cls] if cls in routes else _verdict(FIXED_VERDICTS[cls]) for cls in EXIT_TYPES}

    def handled_types(self) -> frozenset[type[VcpuExit]]:
        """The exit types this dispatcher has a handler for (every one of EXIT_TYPES)."""
        return frozenset(self._handlers)

    def handle(self, exit_: VcpuExit, completer: Completer, stats: DispatchStats) -> Verdict:
        """Handle one exit; return what the vCPU loop should do next."""
        try:
            handler = self._handlers[type(exit_)]
        except KeyError:
            raise TypeError(f"not a VM exit: {exit_!r}") from None
        return handler(exit_, completer, stats)

    def _unclaimed(self, stats: DispatchStats, space: str, addr: int, size: int, is_write: bool) -> Verdict:
        stats.note_unclaimed(space, addr, size, is_write)
        return Verdict.FAILED if self.strict else Verdict.CONTINUE

    def _io_out(self, e: IoOut, completer: Completer, stats: DispatchStats) -> Verdict:
        port, size, count, data = e
        hit = self.pio_bus.resolve(port, size)
        if hit is None:
            return self._unclaimed(stats, "pio", port, size, True)
        device, offset = hit
        if count == 1:
            device.write(offset, data)
        else:  # string I/O (rep outs): count items of size bytes, all to the same port
            for i in range(0, size * count, size):
                device.write(offset, data[i:i + size])
        return _CONTINUE

    def _io_in(self, e: IoIn, completer: Completer, stats: DispatchStats) -> Verdict:
        hit = self.pio_bus.resolve(e.port, e.size)
        if hit is None:
            completer.complete_io_in(bytes(e.size * e.count))
            return self._unclaimed(stats, "pio", e.port, e.size, False)
        device, offset = hit
        data = b"".join(device.read(offset, e.size) for _ in range(e.count))
        completer.complete_io_in(data)
        return Verdict.CONTINUE

    def _mmio_write(self, e: MmioWrite, completer: Completer, stats: DispatchStats) -> Verdict:
        hit = self.mmio_bus.resolve(e.addr, len(e.data))
        if hit is None:
            return self._unclaimed(stats, "mmio", e.addr, len(e.data), True)
        device, offset = hit
        device.write(offset, e.data)
        return Verdict.CONTINUE

    def _mmio_read(self, e: MmioRead, completer: Completer, stats: DispatchStats) -> Verdict:
        hit = self.mmio_bus.resolve(e.addr, e.length)
        if hit is None:
            completer.complete_mmio_read(bytes(e.length))
            return self._unclaimed(stats, "mmio", e.addr, e.length, False)
        device, offset = hit
        completer.complete_mmio_read(device.read(offset, e.length))
        return Verdict.CONTINUE
