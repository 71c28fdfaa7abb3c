"""The exit dispatcher: the one ``match`` over decoded exits, free of KVM so tests drive it directly.

PIO and MMIO go to the same :class:`~minivmm.devices.bus.Bus` implementation (a port bus and an MMIO
bus). Reads are answered through the ``completer`` (the vCPU, or a test double) before the next KVM_RUN.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from minivmm.devices.bus import Bus
from minivmm.kvm.exits import (FailEntry, Hlt, InternalError, Interrupted, IoIn, IoOut, MmioRead,
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


class ExitDispatcher:
    """Routes exits to the buses. ``strict`` makes an unclaimed access fail the vCPU."""

    def __init__(self, pio_bus: Bus, mmio_bus: Bus, strict: bool = False) -> None:
        self.pio_bus = pio_bus
        self.mmio_bus = mmio_bus
        self.strict = strict

    def handle(self, exit_: VcpuExit, completer: Completer, stats: DispatchStats) -> Verdict:
        """Handle one exit; return what the vCPU loop should do next."""
        # The two PIO cases come first: they are the common exits of every guest here.
        cls = type(exit_)
        if cls is IoOut:
            return self._io_out(exit_, stats)  # type: ignore[arg-type]
        if cls is IoIn:
            return self._io_in(exit_, completer, stats)  # type: ignore[arg-type]
        if cls is MmioWrite:
            return self._mmio_write(exit_, stats)  # type: ignore[arg-type]
        if cls is MmioRead:
            return self._mmio_read(exit_, completer, stats)  # type: ignore[arg-type]
        if cls is Hlt:
            return Verdict.HALTED
        if cls is Interrupted:
            return Verdict.INTERRUPTED
        if cls in (Shutdown, FailEntry, InternalError, SystemEvent, Unsupported):
            return Verdict.FAILED
        raise TypeError(f"not a VM exit: {exit_!r}")

    def _unclaimed(self, stats: DispatchStats, space: str, addr: int, size: int, is_write: bool) -> Verdict:
        stats.note_unclaimed(space, addr, size, is_write)
        return Verdict.FAILED if self.strict else Verdict.CONTINUE

    def _io_out(self, e: IoOut, stats: DispatchStats) -> Verdict:
        hit = self.pio_bus.resolve(e.port, e.size)
        if hit is None:
            return self._unclaimed(stats, "pio", e.port, e.size, True)
        device, offset = hit
        if e.count == 1:
            device.write(offset, e.data)
        else:  # string I/O (rep outs): count items of size bytes, all to the same port
            size = e.size
            for i in range(0, size * e.count, size):
                device.write(offset, e.data[i:i + size])
        return Verdict.CONTINUE

    def _io_in(self, e: IoIn, completer: Completer, stats: DispatchStats) -> Verdict:
        hit = self.pio_bus.resolve(e.port, e.size)
        if hit is None:
            completer.complete_io_in(bytes(e.size * e.count))
            return self._unclaimed(stats, "pio", e.port, e.size, False)
        device, offset = hit
        data = b"".join(device.read(offset, e.size) for _ in range(e.count))
        completer.complete_io_in(data)
        return Verdict.CONTINUE

    def _mmio_write(self, e: MmioWrite, stats: DispatchStats) -> Verdict:
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
