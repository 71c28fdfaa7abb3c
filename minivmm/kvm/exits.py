"""VM exits: one immutable value per ``KVM_EXIT_*`` reason, decoded once from ``struct kvm_run``.

:func:`decode_exit` is the only code that reads the exit union of ``kvm_run``; everything after it
(dispatch, tracing, the shadow checker) works on these values, which tests can also build by hand.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Union

from minivmm.kvm.uapi import ffi, lib

#: Every KVM_EXIT_* reason the host's header defines, by name (values from the header, not retyped).
ExitReason = enum.IntEnum(  # type: ignore[misc]
    "ExitReason",
    {name[len("KVM_EXIT_"):]: getattr(lib, name) for name in dir(lib)
     if name.startswith("KVM_EXIT_") and name not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")},
)


def exit_reason_name(reason: int) -> str:
    """Return ``KVM_EXIT_<NAME>`` for a reason number, or ``KVM_EXIT_<n>`` for one the header lacks."""
    try:
        return "KVM_EXIT_" + ExitReason(reason).name
    except ValueError:
        return f"KVM_EXIT_{reason}"


@dataclass(frozen=True, slots=True)
class IoOut:
    """KVM_EXIT_IO, direction out: the guest wrote ``data`` (``count`` items of ``size`` bytes) to ``port``."""

    port: int
    size: int
    count: int
    data: bytes


@dataclass(frozen=True, slots=True)
class IoIn:
    """KVM_EXIT_IO, direction in: the guest reads ``count`` items of ``size`` bytes from ``port``.

    The VMM answers with ``Vcpu.complete_io_in`` before the next KVM_RUN.
    """

    port: int
    size: int
    count: int


@dataclass(frozen=True, slots=True)
class MmioWrite:
    """KVM_EXIT_MMIO, a write of ``data`` at guest-physical ``addr`` that no memslot or in-kernel device took."""

    addr: int
    data: bytes


@dataclass(frozen=True, slots=True)
class MmioRead:
    """KVM_EXIT_MMIO, a read of ``length`` bytes at ``addr``; answered with ``Vcpu.complete_mmio_read``."""

    addr: int
    length: int


@dataclass(frozen=True, slots=True)
class Hlt:
    """KVM_EXIT_HLT: the guest executed HLT (only exits to userspace without an in-kernel irqchip)."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """KVM_EXIT_SHUTDOWN: the vCPU hit a triple fault (or an equivalent shutdown condition)."""


@dataclass(frozen=True, slots=True)
class FailEntry:
    """KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest (invalid guest state)."""

    hardware_entry_failure_reason: int
    cpu: int


@dataclass(frozen=True, slots=True)
class InternalError:
    """KVM_EXIT_INTERNAL_ERROR: KVM could not handle the exit (e.g. suberror 1, emulation failure)."""

    suberror: int
    data: tuple[int, ...]

    @property
    def is_emulation_failure(self) -> bool:
        """Whether KVM's instruction emulator gave up (KVM_INTERNAL_ERROR_EMULATION)."""
        return self.suberror == lib.KVM_INTERNAL_ERROR_EMULATION


@dataclass(frozen=True, slots=True)
class SystemEvent:
    """KVM_EXIT_SYSTEM_EVENT: shutdown, reset, crash, ... requested by the guest (``type``)."""

    type: int
    data: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Interrupted:
    """KVM_RUN returned EINTR: a signal (or ``immediate_exit``) took the vCPU out before or while running."""


@dataclass(frozen=True, slots=True)
class Unsupported:
    """Any exit reason minivmm does not handle, kept with its number so it can be reported."""

    reason: int

    @property
    def name(self) -> str:
        """The reason's KVM_EXIT_* name."""
        return exit_reason_name(self.reason)


VcpuExit = Union[IoOut, IoIn, MmioWrite, MmioRead, Hlt, Shutdown, FailEntry, InternalError, SystemEvent,
                 Interrupted, Unsupported]

# Singletons: these exits carry no data, so the hot path need not build a new value for each.
HLT = Hlt()
SHUTDOWN = Shutdown()
INTERRUPTED = Interrupted()

_EXIT_IO = lib.KVM_EXIT_IO
_EXIT_MMIO = lib.KVM_EXIT_MMIO
_EXIT_HLT = lib.KVM_EXIT_HLT
_EXIT_SHUTDOWN = lib.KVM_EXIT_SHUTDOWN
_EXIT_FAIL_ENTRY = lib.KVM_EXIT_FAIL_ENTRY
_EXIT_INTERNAL_ERROR = lib.KVM_EXIT_INTERNAL_ERROR
_EXIT_SYSTEM_EVENT = lib.KVM_EXIT_SYSTEM_EVENT
_IO_OUT = lib.KVM_EXIT_IO_OUT
_buffer = ffi.buffer


def decode_exit(run: Any, base: Any) -> VcpuExit:
    """Decode the exit ``run`` (a ``struct kvm_run *``) describes; ``base`` is the same pointer as ``char *``.

    IO data lives at ``data_offset`` bytes from the start of the mapping, which is why the byte view of
    the mapping is needed too.
    """
    reason = run.exit_reason
    if reason == _EXIT_IO:
        io = run.io
        if io.direction == _IO_OUT:
            return IoOut(io.port, io.size, io.count, _buffer(base + io.data_offset, io.size * io.count)[:])
        return IoIn(io.port, io.size, io.count)
    if reason == _EXIT_MMIO:
        mmio = run.mmio
        if mmio.is_write:
            return MmioWrite(mmio.phys_addr, _buffer(mmio.data, mmio.len)[:])
        return MmioRead(mmio.phys_addr, mmio.len)
    if reason == _EXIT_HLT:
        return HLT
    if reason == _EXIT_SHUTDOWN:
        return SHUTDOWN
    if reason == _EXIT_FAIL_ENTRY:
        fe = run.fail_entry
        return FailEntry(fe.hardware_entry_failure_reason, fe.cpu)
    if reason == _EXIT_INTERNAL_ERROR:
        internal = run.internal
        return InternalError(internal.suberror, tuple(internal.data[0:min(internal.ndata, 16)]))
    if reason == _EXIT_SYSTEM_EVENT:
        ev = run.system_event
        return SystemEvent(ev.type, tuple(ev.data[0:min(ev.ndata, 16)]))
    return Unsupported(reason)


def describe_exit(exit_: VcpuExit) -> str:
    """A one-line, human description of an exit, as ``--trace`` and reports print it."""
    if isinstance(exit_, IoOut):
        return f"IO out  port {exit_.port:#06x} size {exit_.size} count {exit_.count} data {exit_.data.hex()}"
    if isinstance(exit_, IoIn):
        return f"IO in   port {exit_.port:#06x} size {exit_.size} count {exit_.count}"
    if isinstance(exit_, MmioWrite):
        return f"MMIO write {exit_.addr:#x} len {len(exit_.data)} data {exit_.data.hex()}"
    if isinstance(exit_, MmioRead):
        return f"MMIO read  {exit_.addr:#x} len {exit_.length}"
    if isinstance(exit_, FailEntry):
        return f"FAIL_ENTRY hardware reason {exit_.hardware_entry_failure_reason:#x} on cpu {exit_.cpu}"
    if isinstance(exit_, InternalError):
        kind = " (emulation failure)" if exit_.is_emulation_failure else ""
        return f"INTERNAL_ERROR suberror {exit_.suberror}{kind} data {[hex(d) for d in exit_.data]}"
    if isinstance(exit_, SystemEvent):
        return f"SYSTEM_EVENT type {exit_.type} data {[hex(d) for d in exit_.data]}"
    if isinstance(exit_, Unsupported):
        return f"unsupported exit {exit_.name}"
    return type(exit_).__name__.upper()


def exit_kind(exit_type: type) -> str:
    """The summary name of an exit type: ``io_out``, ``mmio_read``, ``hlt``, ... (one per value type)."""
    return EXIT_KINDS[exit_type]


#: The summary name of each exit type, as reports and JSON count them.
EXIT_KINDS: dict[type, str] = {IoOut: "io_out", IoIn: "io_in", MmioWrite: "mmio_write", MmioRead: "mmio_read", Hlt: "hlt",
         Shutdown: "shutdown", FailEntry: "fail_entry", InternalError: "internal_error",
         SystemEvent: "system_event", Interrupted: "interrupted", Unsupported: "unsupported"}
