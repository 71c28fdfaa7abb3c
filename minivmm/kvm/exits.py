"""VM exits: one immutable value per ``KVM_EXIT_*`` reason, decoded once from ``struct kvm_run``.

:class:`ExitDecoder` (and :func:`decode_exit`, its one-shot form) is the only code that reads the exit
union of ``kvm_run``; everything after it (dispatch, tracing, the shadow checker) works on these
values, which tests can also build by hand.

The values are typed ``NamedTuple`` s rather than frozen dataclasses: equally immutable plain data, but
a frozen dataclass costs ~0.3 µs to build (one ``object.__setattr__`` per field) and one is built on
every exit, the program's hot path (scripts/bench_exits.py). Equality is by type and fields, so
``Hlt() != Shutdown()`` although both are empty tuples.
"""

from __future__ import annotations

import enum
import re
from typing import Any, NamedTuple, TypeAlias, get_args

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


class IoOut(NamedTuple):
    """KVM_EXIT_IO, direction out: the guest wrote ``data`` (``count`` items of ``size`` bytes) to ``port``."""

    port: int
    size: int
    count: int  # type: ignore[assignment]  # the kvm_run field's name; shadows tuple.count
    data: bytes

    def describe(self) -> str:
        """One line, as ``--trace`` and reports print it."""
        return f"IO out  port {self.port:#06x} size {self.size} count {self.count} data {self.data.hex()}"


class IoIn(NamedTuple):
    """KVM_EXIT_IO, direction in: the guest reads ``count`` items of ``size`` bytes from ``port``.

    The VMM answers with ``Vcpu.complete_io_in`` before the next KVM_RUN.
    """

    port: int
    size: int
    count: int  # type: ignore[assignment]  # the kvm_run field's name; shadows tuple.count

    def describe(self) -> str:
        """One line, as ``--trace`` and reports print it."""
        return f"IO in   port {self.port:#06x} size {self.size} count {self.count}"


class MmioWrite(NamedTuple):
    """KVM_EXIT_MMIO, a write of ``data`` at guest-physical ``addr`` that no memslot or in-kernel device took."""

    addr: int
    data: bytes

    def describe(self) -> str:
        """One line, as ``--trace`` and reports print it."""
        return f"MMIO write {self.addr:#x} len {len(self.data)} data {self.data.hex()}"


class MmioRead(NamedTuple):
    """KVM_EXIT_MMIO, a read of ``length`` bytes at ``addr``; answered with ``Vcpu.complete_mmio_read``."""

    addr: int
    length: int

    def describe(self) -> str:
        """One line, as ``--trace`` and reports print it."""
        return f"MMIO read  {self.addr:#x} len {self.length}"


class Hlt(NamedTuple):
    """KVM_EXIT_HLT: the guest executed HLT (only exits to userspace without an in-kernel irqchip)."""

    def describe(self) -> str:
        """One line, as ``--trace`` and reports print it."""
        return "HLT"


class Shutdown(NamedTuple):
    """KVM_EXIT_SHUTDOWN: the vCPU hit a triple fault (or an equivalent shutdown condition)."""

    def describe(self) -> str:
        """One line, as ``--trace`` and reports print it."""
        return "SHUTDOWN"


class FailEntry(NamedTuple):
    """KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest (invalid guest state)."""

    hardware_entry_failure_reason: int
    cpu: int

    def describe(self) -> str:
        """One line, as ``--trace`` and reports print it."""
        return f"FAIL_ENTRY hardware reason {self.hardware_entry_failure_reason:#x} on cpu {self.cpu}"


class InternalError(NamedTuple):
    """KVM_EXIT_INTERNAL_ERROR: KVM could not handle the exit (e.g. suberror 1, emulation failure)."""

    suberror: int
    data: tuple[int, ...]

    @property
    def is_emulation_failure(self) -> bool:
        """Whether KVM's instruction emulator gave up (KVM_INTERNAL_ERROR_EMULATION)."""
        return bool(self.suberror == lib.KVM_INTERNAL_ERROR_EMULATION)

    def describe(self) -> str:
        """One line, as ``--trace`` and reports print it."""
        kind = " (emulation failure)" if self.is_emulation_failure else ""
        return f"INTERNAL_ERROR suberror {self.suberror}{kind} data {[hex(d) for d in self.data]}"


class SystemEvent(NamedTuple):
    """KVM_EXIT_SYSTEM_EVENT: shutdown, reset, crash, ... requested by the guest (``type``)."""

    type: int
    data: tuple[int, ...]

    def describe(self) -> str:
        """One line, as ``--trace`` and reports print it."""
        return f"SYSTEM_EVENT type {self.type} data {[hex(d) for d in self.data]}"


class Interrupted(NamedTuple):
    """KVM_RUN returned EINTR: a signal (or ``immediate_exit``) took the vCPU out before or while running."""

    def describe(self) -> str:
        """One line, as ``--trace`` and reports print it."""
        return "INTERRUPTED"


class Unsupported(NamedTuple):
    """Any exit reason minivmm does not handle, kept with its number so it can be reported."""

    reason: int

    @property
    def name(self) -> str:
        """The reason's KVM_EXIT_* name."""
        return exit_reason_name(self.reason)

    def describe(self) -> str:
        """One line, as ``--trace`` and reports print it."""
        return f"unsupported exit {self.name}"


def _typed_eq(a: tuple[Any, ...], b: object) -> bool:
    return type(a) is type(b) and tuple.__eq__(a, b)


def _typed_ne(a: tuple[Any, ...], b: object) -> bool:
    return not _typed_eq(a, b)


def _typed_hash(a: tuple[Any, ...]) -> int:
    return hash((type(a).__name__, tuple(a)))


#: Every exit value type: the one list of exit kinds. Everything else (EXIT_TYPES, EXIT_KINDS, the
#: dispatch table, reports) is derived from it, so a new kind is one class added here.
VcpuExit: TypeAlias = (IoOut | IoIn | MmioWrite | MmioRead | Hlt | Shutdown | FailEntry | InternalError
                       | SystemEvent | Interrupted | Unsupported)

#: The exit value types, in the order of ``VcpuExit``.
EXIT_TYPES: tuple[type[VcpuExit], ...] = get_args(VcpuExit)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


#: The summary name of each exit type (``io_out``, ``mmio_read``, ``hlt``, ...), as reports and JSON
#: count them: the class name in snake case.
EXIT_KINDS: dict[type[VcpuExit], str] = {cls: _snake(cls.__name__) for cls in EXIT_TYPES}
#: The exits of KVM_EXIT_IO and of KVM_EXIT_MMIO (what --ftrace compares with the kernel's record).
PIO_EXITS: tuple[type[VcpuExit], ...] = (IoOut, IoIn)
MMIO_EXITS: tuple[type[VcpuExit], ...] = (MmioWrite, MmioRead)

for _cls in EXIT_TYPES:
    _cls.__eq__ = _typed_eq  # type: ignore[method-assign]
    _cls.__ne__ = _typed_ne  # type: ignore[method-assign,assignment]
    _cls.__hash__ = _typed_hash  # type: ignore[method-assign,assignment]

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
_MMIO_DATA = ffi.offsetof("struct kvm_run", "mmio") + ffi.offsetof("kvm_run_mmio_t", "data")
_new = tuple.__new__  # builds a NamedTuple without the Python-level __new__ (half the cost)


class ExitDecoder:
    """Decodes the exit a vCPU's ``kvm_run`` describes, after each KVM_RUN.

    Built once per vCPU: the cdata views of the ``io`` and ``mmio`` members and a byte view of the
    whole mapping are made here, not on every exit. ``run`` is a ``struct kvm_run *`` over a mapping of
    ``size`` bytes (IO data lives at ``io.data_offset`` from the start of the mapping).
    """

    __slots__ = ("run", "_io", "_mmio", "_bytes")

    def __init__(self, run: Any, size: int) -> None:
        self.run = run
        self._io = run.io
        self._mmio = run.mmio
        self._bytes = ffi.buffer(run, size)

    def decode(self) -> VcpuExit:
        """Return the current exit as a value."""
        run = self.run
        reason = run.exit_reason
        if reason == _EXIT_IO:
            io = self._io
            size, count = io.size, io.count
            if io.direction == _IO_OUT:
                off = io.data_offset
                return _new(IoOut, (io.port, size, count, self._bytes[off:off + size * count]))
            return _new(IoIn, (io.port, size, count))
        if reason == _EXIT_MMIO:
            mmio = self._mmio
            if mmio.is_write:
                off = _MMIO_DATA
                return _new(MmioWrite, (mmio.phys_addr, self._bytes[off:off + min(mmio.len, 8)]))
            return _new(MmioRead, (mmio.phys_addr, mmio.len))
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


def decode_exit(run: Any, size: int) -> VcpuExit:
    """Decode the exit in ``run`` (a ``struct kvm_run *`` over ``size`` bytes) once."""
    return ExitDecoder(run, size).decode()


def describe_exit(exit_: VcpuExit) -> str:
    """A one-line, human description of an exit, as ``--trace`` and reports print it."""
    return exit_.describe()


def exit_kind(exit_type: type[VcpuExit]) -> str:
    """The summary name of an exit type: ``io_out``, ``mmio_read``, ``hlt``, ... (one per value type)."""
    return EXIT_KINDS[exit_type]
