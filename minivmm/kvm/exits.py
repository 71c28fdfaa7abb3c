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
import errno
import re
import sys
from typing import Any, Literal, NamedTuple, TypeAlias, get_args

from minivmm.kvm.uapi import ffi, lib, raise_for

#: KVM_EXIT_* macros that are not exit reasons but values of a field inside one exit's payload
#: (``kvm_run.io.direction``, ``kvm_hyperv_exit.type``, ``kvm_xen_exit.type``): they reuse the reasons'
#: numbers (KVM_EXIT_HYPERV_HCALL is 2, as KVM_EXIT_IO), so they must not name a reason.
_PAYLOAD_FAMILIES = ("KVM_EXIT_IO_", "KVM_EXIT_HYPERV_", "KVM_EXIT_XEN_")

#: Every KVM_EXIT_* reason the host's header defines, by name (values from the header, not retyped).
ExitReason = enum.IntEnum(  # type: ignore[misc]
    "ExitReason",
    {name[len("KVM_EXIT_"):]: getattr(lib, name) for name in dir(lib)
     if name.startswith("KVM_EXIT_") and not name.startswith(_PAYLOAD_FAMILIES)},
)


def exit_reason_name(reason: int) -> str:
    """Return ``KVM_EXIT_<NAME>`` for a reason number, or ``KVM_EXIT_<n>`` for one the header lacks."""
    try:
        return "KVM_EXIT_" + ExitReason(reason).name
    except ValueError:
        return f"KVM_EXIT_{reason}"


class BusAccess(NamedTuple):
    """The one access an exit's guest instruction offered to KVM's PIO or MMIO bus before it exited:
    ``data`` is None for a read. The shadow judges exits by it."""

    pio: bool
    addr: int
    length: int
    data: bytes | None


class IoOut(NamedTuple):
    """KVM_EXIT_IO, direction out: the guest wrote ``data`` (``count`` items of ``size`` bytes) to ``port``."""

    port: int
    size: int
    count: int  # type: ignore[assignment]  # the kvm_run field's name; shadows tuple.count
    data: bytes

    def describe(self) -> str:
        """One line, as ``--trace`` and reports print it."""
        return f"IO out  port {self.port:#06x} size {self.size} count {self.count} data {self.data.hex()}"

    def bus_access(self) -> BusAccess | None:
        """The access offered to the PIO bus; None for string I/O (``count`` > 1: each item was offered
        with its own value, so the exit as a whole is not one access)."""
        return BusAccess(True, self.port, self.size, self.data) if self.count == 1 else None


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

    def bus_access(self) -> BusAccess | None:
        """The read offered to the PIO bus (every item of string I/O reads the same port)."""
        return BusAccess(True, self.port, self.size, None)


class MmioWrite(NamedTuple):
    """KVM_EXIT_MMIO, a write of ``data`` at guest-physical ``addr`` that no memslot or in-kernel device took."""

    addr: int
    data: bytes

    def describe(self) -> str:
        """One line, as ``--trace`` and reports print it."""
        return f"MMIO write {self.addr:#x} len {len(self.data)} data {self.data.hex()}"

    def bus_access(self) -> BusAccess | None:
        """The write offered to the MMIO bus."""
        return BusAccess(False, self.addr, len(self.data), self.data)


class MmioRead(NamedTuple):
    """KVM_EXIT_MMIO, a read of ``length`` bytes at ``addr``; answered with ``Vcpu.complete_mmio_read``."""

    addr: int
    length: int

    def describe(self) -> str:
        """One line, as ``--trace`` and reports print it."""
        return f"MMIO read  {self.addr:#x} len {self.length}"

    def bus_access(self) -> BusAccess | None:
        """The read offered to the MMIO bus."""
        return BusAccess(False, self.addr, self.length, None)


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
#: The exits of KVM_EXIT_IO and of KVM_EXIT_MMIO (what --ftrace compares with the kernel's record); each
#: has ``bus_access()``, the access its instruction offered to the bus (what the shadow judges).
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
_KVM_RUN = lib.KVM_RUN
_ioctl_val = lib.minivmm_ioctl_val
_EINTR = errno.EINTR


def _members(union_member: str, typedef: str) -> dict[str, tuple[int, Any]]:
    base = ffi.offsetof("struct kvm_run", union_member)
    return {name: (base + f.offset, f.type) for name, f in ffi.typeof(typedef).fields}


_IO = _members("io", "kvm_run_io_t")
_MMIO = _members("mmio", "kvm_run_mmio_t")
_EXIT_REASON_AT = ffi.offsetof("struct kvm_run", "exit_reason")
_new = tuple.__new__  # builds a NamedTuple without the Python-level __new__ (half the cost)


def _word_fields(fields: dict[str, tuple[int, Any]], names: tuple[str, ...]) -> tuple[int, dict[str, int]]:
    """The index of the 8-byte word of ``kvm_run`` that holds all of ``names``, and each field's shift
    in it (little-endian), from cffi's offsets and sizes: the decoder reads such a group as one int."""
    word = fields[names[0]][0] // 8
    shifts = {}
    for name in names:
        offset, ctype = fields[name]
        if offset // 8 != word or (offset + ffi.sizeof(ctype) - 1) // 8 != word:
            raise ImportError(f"kvm_run's {name} is not in word {word}: the decoder's reads need re-deriving")
        shifts[name] = (offset % 8) * 8
    return word, shifts


def _item_index(fields: dict[str, tuple[int, Any]], name: str, size: int) -> int:
    """The index of field ``name`` in a view of ``kvm_run`` as unsigned items of ``size`` bytes (the
    field is one such item, aligned), from cffi's offset and size."""
    offset, ctype = fields[name]
    if ffi.sizeof(ctype) != size or offset % size:
        raise ImportError(f"kvm_run's {name} is not one aligned {size}-byte item: the decoder's reads need re-deriving")
    return offset // size


if sys.byteorder != "little":  # the word reads below take fields out of little-endian words
    raise ImportError("minivmm's exit decoder reads kvm_run as little-endian words")
#: ``struct kvm_run``'s io member, direction to count, is one 8-byte word: its value is the memo key of
#: a port access (with the data item of an out).
_IO_WORD, _IO_SHIFTS = _word_fields(_IO, ("direction", "size", "port", "count"))
_DIR_SHIFT, _SIZE_SHIFT, _PORT_SHIFT, _COUNT_SHIFT = (_IO_SHIFTS[f] for f in ("direction", "size", "port", "count"))
_DATA_OFFSET_WORD = _word_fields(_IO, ("data_offset",))[0]
_MMIO_ADDR_WORD = _word_fields(_MMIO, ("phys_addr",))[0]
#: mmio's len and is_write, read as items of their own size: small values, which Python does not
#: allocate (shifting them out of their 8-byte word would build a big int per exit).
_MMIO_LEN_U32 = _item_index(_MMIO, "len", 4)
_MMIO_IS_WRITE_U8 = _item_index(_MMIO, "is_write", 1)
_MMIO_DATA_AT = _MMIO["data"][0]
_REASON_U32 = _EXIT_REASON_AT // 4
#: An IO item of this many bytes is read as one unsigned int of a view of the mapping ("B", "H", "I").
_ITEM_CODES: dict[int, Literal["B", "H", "I"]] = {1: "B", 2: "H", 4: "I"}
#: Past this many remembered exit values the memo starts afresh (a guest writing ever-new values cannot
#: grow it without bound).
MEMO_LIMIT = 4096


class ExitDecoder:
    """Decodes the exit a vCPU's ``kvm_run`` describes, after each KVM_RUN.

    Built once per vCPU: views of the whole mapping are made here, not on every exit. ``run`` is a
    ``struct kvm_run *`` over a mapping of ``size`` bytes (IO data lives at ``io.data_offset`` from the
    start of the mapping); ``fd`` is the vCPU's, for :meth:`run`.

    The decode is on every exit's path (scripts/bench_exits.py). Right after the guest ran, the CPU's
    caches are cold, and then what an exit costs is mostly how many objects it builds and how much
    memory it touches, not how many bytecodes it runs. So the decoder reads ``kvm_run`` as machine
    words (the io member's direction, size, port and count are one 8-byte word) and remembers the
    values it built: an exit whose words it has seen before (an ``in`` from a port, an ``out`` of the
    same value to it, an MMIO read of an address) returns the same immutable value, built once, found
    with one or two dict lookups. MMIO writes, whose data rarely repeats, and string I/O are built each
    time. Every remembered answer is keyed by every field it was built from, so it is the value a fresh
    decode would build.
    """

    __slots__ = ("run_struct", "fd", "_bytes", "_size", "_u8", "_u32", "_u64", "_items", "_io_memo", "_mmio_memo")

    def __init__(self, run: Any, size: int, fd: int = -1) -> None:
        self.run_struct = run
        self.fd = fd
        self._size = size
        self._bytes = ffi.buffer(run, size)
        view = memoryview(self._bytes)
        self._u8 = view
        self._u32 = view[:size - size % 4].cast("I")
        self._u64 = view[:size - size % 8].cast("Q")
        #: IO item size -> a view of the mapping in unsigned items of that size.
        self._items = {n: view[:size - size % n].cast(code) for n, code in _ITEM_CODES.items()}
        #: io word -> the IoIn it describes or, for an ``out`` of one item, ``(data_offset, the items view,
        #: the item's index in it, {item value: IoOut})``.
        self._io_memo: dict[int, Any] = {}
        #: MMIO address -> the last MmioRead there (a read of another length there replaces it).
        self._mmio_memo: dict[int, MmioRead] = {}

    def decode(self) -> VcpuExit:
        """Return the exit ``kvm_run`` holds now as a value (without running the vCPU)."""
        return self.run(False)

    # The hot path: one frame per exit by design (a helper call costs ~0.15 us on a cold exit), so it
    # stays above the complexity limit.
    def run(self, enter: bool = True) -> VcpuExit:  # noqa: C901
        """Run the vCPU until its next exit to userspace (KVM_RUN on ``fd``), and return that exit as a
        value; with ``enter`` False, only decode the exit ``kvm_run`` holds now.

        This bound method is ``Vcpu.run``, so that entering the guest and decoding its exit take one
        Python frame, and the vCPU loop's call to it is a plain Python-to-Python call (which CPython
        runs without re-entering the interpreter from C, unlike a call through a ``partial``). EINTR
        (a signal, or ``immediate_exit`` set) is not an error: it returns ``Interrupted``; any other
        failure raises through the one errno choke point (``raise_for``).
        """
        if enter and _ioctl_val(self.fd, _KVM_RUN, 0) < 0:
            err = ffi.errno
            if err == _EINTR:
                return INTERRUPTED
            raise_for(_KVM_RUN, err)
        reason = self._u32[_REASON_U32]
        if reason == _EXIT_IO:
            io = self._u64[_IO_WORD]
            known = self._io_memo.get(io)
            if known is not None:
                if type(known) is not tuple:
                    return known  # type: ignore[no-any-return]  # an IoIn
                offset, items, index, values = known  # an out: its value is the item at data_offset
                if self._u64[_DATA_OFFSET_WORD] == offset:
                    exit_ = values.get(items[index])
                    if exit_ is not None:
                        return exit_  # type: ignore[no-any-return]
            return self._decode_io(io)
        if reason == _EXIT_MMIO:
            length = self._u32[_MMIO_LEN_U32]
            if not self._u8[_MMIO_IS_WRITE_U8]:
                addr = self._u64[_MMIO_ADDR_WORD]
                known_read = self._mmio_memo.get(addr)
                if known_read is not None and known_read[1] == length:
                    return known_read
                read = _new(MmioRead, (addr, length))
                _remember(self._mmio_memo, addr, read)
                return read
            data = self._bytes[_MMIO_DATA_AT:_MMIO_DATA_AT + (length if length < 8 else 8)]
            return _new(MmioWrite, (self._u64[_MMIO_ADDR_WORD], data))
        if reason == _EXIT_HLT:
            return HLT
        if reason == _EXIT_SHUTDOWN:
            return SHUTDOWN
        run = self.run_struct
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

    def _decode_io(self, io: int) -> VcpuExit:
        """A port exit the memo did not know: build its value, and remember it if it can recur."""
        port, size = io >> _PORT_SHIFT & 0xFFFF, io >> _SIZE_SHIFT & 0xFF
        count = io >> _COUNT_SHIFT & 0xFFFFFFFF
        if io >> _DIR_SHIFT & 0xFF != _IO_OUT:
            exit_in = _new(IoIn, (port, size, count))
            _remember(self._io_memo, io, exit_in)
            return exit_in
        offset = self._u64[_DATA_OFFSET_WORD]
        exit_out = _new(IoOut, (port, size, count, self._bytes[offset:offset + size * count]))
        items = self._items.get(size)
        # One item, aligned and inside the mapping (KVM puts it at the start of a page): remembered by
        # its value. String I/O is not: its data is many items.
        if items is not None and count == 1 and not offset % size and offset + size <= self._size:
            known = self._io_memo.get(io)
            if known is None or known[0] != offset:
                known = (offset, items, offset // size, {})
                _remember(self._io_memo, io, known)
            _remember(known[3], items[offset // size], exit_out)
        return exit_out


def _remember(memo: dict[int, Any], key: int, value: Any) -> None:
    """``memo[key] = value``, starting afresh past MEMO_LIMIT entries (a guest writing ever-new values
    or walking ever-new addresses cannot grow a memo without bound)."""
    if len(memo) >= MEMO_LIMIT:
        memo.clear()
    memo[key] = value


def decode_exit(run: Any, size: int) -> VcpuExit:
    """Decode the exit in ``run`` (a ``struct kvm_run *`` over ``size`` bytes) once."""
    return ExitDecoder(run, size).decode()


def describe_exit(exit_: VcpuExit) -> str:
    """A one-line, human description of an exit, as ``--trace`` and reports print it."""
    return exit_.describe()


def exit_kind(exit_type: type[VcpuExit]) -> str:
    """The summary name of an exit type: ``io_out``, ``mmio_read``, ``hlt``, ... (one per value type)."""
    return EXIT_KINDS[exit_type]
