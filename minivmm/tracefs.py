"""tracefs, the one way minivmm uses it: find or mount it, a private trace instance, events and their
filters, the binary record read from ``per_cpu/cpuN/trace_pipe_raw``, overruns, and teardown on every path.

Used by ``minivmm boot --ftrace`` (minivmm.shadow.ftrace) and ``minivmm trace`` (minivmm.trace.kclock).

Where: tracefs is used where the system mounts it (``/sys/kernel/tracing``, ``/sys/kernel/debug/tracing``),
else on a private mount of our own in the temporary directory (never on another program's temporary
mount, whose unmounting our open files would block, and which goes away when that program ends).

Names: everything minivmm makes carries its owner's pid and the owner's start time (``/proc/PID/stat``
field 22, so a reused pid is not taken for the owner): instances ``minivmm-PID-START-PURPOSE-XXXXXX``,
private mounts ``minivmm-tracefs-PID-START-XXXXXXXX``. Whoever opens tracefs first removes what a
minivmm process that no longer exists left behind (SIGKILL leaves no chance to clean up): instances and
private mounts whose name parses as ours and whose owner is gone, and the names earlier versions used
(``minivmm-trace-PID-XXXXXX``, ``minivmm-PID-XXXXXX``, ``minivmm-tracefs-PID-*``,
``minivmm-trace-tracefs-PID-*``), by pid alone. A live owner's, and anything else, is never touched;
nor are the top-level tracing settings (only files inside our own instances are written).

Reading: each CPU's ring buffer is read through ``trace_pipe_raw`` (consuming, non-blocking), page by
page, and decoded here with the layouts the kernel publishes (``events/header_page``, each event's
``format``): nanosecond timestamps and every field, at any length (``drain`` can be called while tracing
runs, so nothing need pile up in the kernel or here). Records come out in timestamp order across CPUs,
up to a watermark: a record is only handed out once every CPU has been read past its timestamp.

Teardown: a :class:`Session` is a context manager; ``close()`` is idempotent and runs at interpreter
exit (``atexit``) and on SIGTERM/SIGHUP when nothing else handles them, for any session still open.
"""

from __future__ import annotations

import atexit
import errno as _errno
import heapq
import os
import re
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from minivmm.files import make_private_directory

#: Where distributions mount tracefs. Only these are shared.
STANDARD_MOUNTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_INSTANCE = re.compile(r"^minivmm-(\d+)-(\d+)-[a-z]+-[0-9a-f]{6}$")
_MOUNT = re.compile(r"^minivmm-tracefs-(\d+)-(\d+)-[A-Za-z0-9_]{8}$")
#: Names of earlier versions (pid only): instances of ``trace`` and ``--ftrace``, private mounts of both.
_LEGACY_INSTANCE = (re.compile(r"^minivmm-trace-(\d+)-[0-9a-f]{6}$"), re.compile(r"^minivmm-(\d+)-[0-9a-f]{6}$"))
_LEGACY_MOUNT = (re.compile(r"^minivmm-tracefs-(\d+)-[A-Za-z0-9_]{8}$"),
                 re.compile(r"^minivmm-trace-tracefs-(\d+)-[A-Za-z0-9_]{8}$"))

#: Ring-buffer event types (``events/header_event``): lengths 1..28 words are data.
_PADDING, _TIME_EXTEND, _TIME_STAMP = 29, 30, 31
#: Page-header flags in ``commit`` (kernel/trace/ring_buffer.c: RB_MISSED_EVENTS, RB_MISSED_STORED).
_MISSED_EVENTS, _MISSED_STORED = 1 << 31, 1 << 30
#: An absolute timestamp event carries 59 bits; the top bits come from the page (rb_fix_abs_ts()).
_TS_MSB = ~((1 << 59) - 1) & ((1 << 64) - 1)
#: How long after its timestamp an event may still be committing on its CPU (tracing keeps preemption
#: off while it writes one, so this is generous): the ordering watermark stays this far behind.
COMMIT_SLACK_NS = 2_000_000


class TracefsUnavailable(RuntimeError):
    """tracefs, an event or an instance cannot be had here; the message says why."""


def function_filter(functions: Sequence[str], addresses: dict[str, int] | None = None) -> str:
    """An event filter that keeps records whose ``function`` field is one of ``functions``: by name with
    the ``.function`` modifier, or (older kernels have none) by the addresses ``kernel_addresses`` found."""
    if addresses is None:
        return " || ".join(f"function.function == {f}" for f in functions)
    return " || ".join(f"function == {addresses[f]:#x}" for f in functions)


def kernel_addresses(names: set[str]) -> dict[str, int] | None:
    """Addresses of the kernel functions ``names`` from /proc/kallsyms; None where they are hidden
    (kptr_restrict) or missing."""
    found: dict[str, int] = {}
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in names and parts[2] not in found:
                    found[parts[2]] = int(parts[0], 16)
    except OSError:
        return None
    return found if len(found) == len(names) and all(found.values()) else None


class Record(NamedTuple):
    """One event: timestamp (ns, the instance's trace clock), CPU, event name (``system/name``), the
    writing task's pid (thread id) and the requested fields, in the order they were asked for."""

    ts: int
    cpu: int
    event: str
    pid: int
    fields: tuple[int, ...]


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), None if there is no such process."""
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _owner_alive(pid: int, start: int | None) -> bool:
    """Whether the process that made a name still exists (with ``start`` known: the same process)."""
    now = _start_time(pid)
    return now is not None and (start is None or now == start)


def owner_of(name: str) -> tuple[int, int | None] | None:
    """(pid, start time or None) of the minivmm process that made an instance or mount ``name``; None
    if the name is not one minivmm makes."""
    for pattern in (_INSTANCE, _MOUNT):
        m = pattern.match(name)
        if m:
            return int(m.group(1)), int(m.group(2))
    for pattern in (*_LEGACY_INSTANCE, *_LEGACY_MOUNT):
        m = pattern.match(name)
        if m:
            return int(m.group(1)), None
    return None


def _tracefs_mounts() -> list[str]:
    """Every tracefs mount point, in /proc/mounts order (octal escapes decoded)."""
    with open("/proc/mounts") as f:
        return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), p[1])
                for line in f if len(p := line.split()) > 2 and p[2] == "tracefs"]


def _umount(path: str) -> bool:
    return subprocess.run(["umount", path], capture_output=True).returncode == 0


def remove_stale(root: str) -> list[str]:
    """Remove the instances and private mounts left by minivmm processes that are gone; returns their
    names. Hygiene only: what cannot be removed is left for the next opener."""
    removed: list[str] = []
    instances = os.path.join(root, "instances")
    for name in os.listdir(instances):
        if not (_INSTANCE.match(name) or any(p.match(name) for p in _LEGACY_INSTANCE)):
            continue
        owner = owner_of(name)
        if owner is None or _owner_alive(*owner):
            continue
        path = os.path.join(instances, name)
        try:
            _write(os.path.join(path, "tracing_on"), "0")
            os.rmdir(path)
            removed.append(name)
        except OSError:
            pass
    for mount in _tracefs_mounts():
        name = os.path.basename(mount)
        if not (_MOUNT.match(name) or any(p.match(name) for p in _LEGACY_MOUNT)):
            continue
        owner = owner_of(name)
        if owner is None or _owner_alive(*owner):
            continue
        if _umount(mount):
            removed.append(mount)
            try:
                os.rmdir(mount)
            except OSError:
                pass
    return removed


# --- the binary record -------------------------------------------------------------------------------

_CODES = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h", (4, False): "I", (4, True): "i",
          (8, False): "Q", (8, True): "q"}
_FIELD = re.compile(r"field:(.*?);\s*offset:(\d+);\s*size:(\d+);\s*signed:(\d+);")


def parse_format(text: str) -> tuple[int, dict[str, tuple[int, int, bool]]]:
    """An event's ``format`` file: its id and ``{field: (offset, size, signed)}``."""
    ident = int(re.search(r"^ID:\s*(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    fields: dict[str, tuple[int, int, bool]] = {}
    for decl, off, size, signed in _FIELD.findall(text):
        name = re.sub(r"\[.*\]$", "", decl.split()[-1]) if decl.split() else decl
        fields[name] = (int(off), int(size), signed == "1")
    return ident, fields


_SYMBOL = re.compile(r'\{\s*(-?(?:0x[0-9a-fA-F]+|\d+))\s*,\s*((?:"[^"]*"\s*)+)\}')


def print_symbols(format_text: str, field_name: str) -> dict[int, str]:
    """The names an event's ``print fmt`` gives the values of one field (``__print_symbolic``), e.g.
    kvm_userspace_exit's reasons: the kernel's own words for them."""
    m = re.search(r"__print_symbolic\(REC->" + re.escape(field_name) + r"\s*,(.*?)\)(?:\s*[,)]|$)", format_text, re.S)
    if m is None:
        return {}
    return {int(v, 0): "".join(re.findall(r'"([^"]*)"', names)) for v, names in _SYMBOL.findall(m.group(1))}


@dataclass(frozen=True)
class EventLayout:
    """How to take the asked-for fields out of one event's bytes."""

    name: str
    unpack: struct.Struct  # common_pid, then the fields
    size: int


def event_layout(name: str, format_text: str, wanted: Sequence[str]) -> tuple[int, EventLayout]:
    """The id and layout of event ``name`` (``system/event``) for the fields ``wanted``."""
    ident, fields = parse_format(format_text)
    spec = ["common_pid", *wanted]
    missing = [f for f in spec if f not in fields]
    if missing:
        raise TracefsUnavailable(f"the kernel's {name} event has no field {missing[0]}")
    pos, fmt = 0, "<"
    for f in spec:
        off, size, signed = fields[f]
        if off < pos or (size, signed) not in _CODES:
            raise TracefsUnavailable(f"cannot decode field {f} of {name}")
        fmt += "x" * (off - pos) + _CODES[(size, signed)]
        pos = off + size
    layout = struct.Struct(fmt)
    return ident, EventLayout(name, layout, layout.size)


class PageHeader(NamedTuple):
    """``events/header_page``: where a page's commit word and data start, and the commit word's size."""

    commit_offset: int
    commit_size: int
    data_offset: int


def parse_header_page(text: str) -> PageHeader:
    """Offsets from ``events/header_page`` (timestamp at 0; ``commit`` is a local_t)."""
    fields = {decl.split()[-1]: (int(off), int(size)) for decl, off, size, _ in _FIELD.findall(text)}
    return PageHeader(fields["commit"][0], fields["commit"][1], fields["data"][0])


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def decode_page(page: bytes, header: PageHeader, cpu: int, layouts: dict[int, EventLayout],
                out: list[Record]) -> int:
    """Append the page's events that have a layout to ``out`` (others are skipped); return the number of
    events the kernel says were lost before this page (0 if none, -1 if lost but not counted)."""
    ts = _U64.unpack_from(page, 0)[0]
    commit = int.from_bytes(page[header.commit_offset:header.commit_offset + header.commit_size], "little")
    length = commit & ~(_MISSED_EVENTS | _MISSED_STORED) & 0xFFFFFFFF
    lost = 0
    if commit & _MISSED_EVENTS:
        lost = -1
        if commit & _MISSED_STORED and len(page) >= header.data_offset + length + 8:
            lost = int.from_bytes(page[header.data_offset + length:header.data_offset + length + 8], "little")
    pos, end = header.data_offset, header.data_offset + length
    while pos < end:
        word = _U32.unpack_from(page, pos)[0]
        kind, delta = word & 0x1F, word >> 5
        if kind == _PADDING:
            if delta == 0:
                break  # the rest of the page is empty
            pos += 4 + _U32.unpack_from(page, pos + 4)[0]  # a discarded event (rb_update_read_stamp skips its delta)
            continue
        if kind == _TIME_EXTEND:
            ts += (_U32.unpack_from(page, pos + 4)[0] << 27) | delta
            pos += 8
            continue
        if kind == _TIME_STAMP:
            absolute = (_U32.unpack_from(page, pos + 4)[0] << 27) | delta
            if ts & _TS_MSB:
                absolute |= ts & _TS_MSB
                if absolute < ts:
                    absolute += 1 << 59
            ts = absolute
            pos += 8
            continue
        ts += delta
        if kind == 0:
            size = _U32.unpack_from(page, pos + 4)[0] - 4
            data = pos + 8
        else:
            size = kind * 4
            data = pos + 4
        pos = data + size
        layout = layouts.get(_U32.unpack_from(page, data)[0] & 0xFFFF)
        if layout is not None and size >= layout.size:
            values = layout.unpack.unpack_from(page, data)
            out.append(Record(ts, cpu, layout.name, values[0], values[1:]))
    return lost


# --- instances ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class Instance:
    """A private trace instance: its own ring buffers and settings (global tracing is left alone)."""

    session: Session
    path: str
    name: str
    layouts: dict[int, EventLayout] = field(default_factory=dict)
    enabled: list[str] = field(default_factory=list)
    readers: dict[int, int] = field(default_factory=dict)   # cpu -> fd of trace_pipe_raw
    pending: dict[int, list[Record]] = field(default_factory=dict)  # cpu -> decoded, not handed out yet
    pages: dict[int, list[bytes]] = field(default_factory=dict)     # cpu -> read, not decoded yet
    backlog: int = 0
    lost_in_pages: int = 0
    lost_uncounted: bool = False
    subbuf: int = 0
    header: PageHeader | None = None
    removed: bool = False

    def write(self, relative: str, value: str) -> None:
        """Write one of the instance's own files (``trace_clock``, ``options/event-fork``...)."""
        _write(os.path.join(self.path, relative), value)

    def format(self, event: str) -> str:
        """The ``format`` file of ``event`` (its fields and how the kernel prints them)."""
        return _read(os.path.join(self.path, "events", event, "format"))

    def has_event(self, event: str) -> bool:
        """Whether the kernel has tracepoint ``system/name``."""
        return os.path.isdir(os.path.join(self.path, "events", event))

    def enable(self, event: str, fields: Sequence[str] = (), filter: str | None = None) -> None:
        """Record ``event`` (``system/name``), keeping ``fields`` of it, only where ``filter`` holds."""
        directory = os.path.join(self.path, "events", event)
        if not os.path.isdir(directory):
            raise TracefsUnavailable(f"the kernel has no {event} tracepoint")
        ident, layout = event_layout(event, _read(os.path.join(directory, "format")), fields)
        self.layouts[ident] = layout
        if filter is not None:
            try:
                _write(os.path.join(directory, "filter"), filter)
            except OSError as e:
                raise TracefsUnavailable(f"the kernel refused the filter of {event} ({filter}): {e.strerror}") from None
        _write(os.path.join(directory, "enable"), "1")
        self.enabled.append(event)

    def follow(self, pids: Iterable[int], children: bool = True) -> None:
        """Record only these tasks (thread ids) and, with ``children``, the threads and processes they
        start (``set_event_pid``, ``options/event-fork``). Applies to every event of the instance."""
        if children:
            self.write("options/event-fork", "1")
        self.write("set_event_pid", " ".join(str(p) for p in pids))

    def add_pids(self, pids: Iterable[int]) -> None:
        """Add tasks to the ones already followed."""
        fd = os.open(os.path.join(self.path, "set_event_pid"), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        try:
            os.write(fd, " ".join(str(p) for p in pids).encode())
        finally:
            os.close(fd)

    def start(self, clock: str = "mono", buffer_kb: int = 4096, overwrite: bool = False) -> None:
        """Set the clock and buffer, open the readers and turn tracing on.

        ``overwrite=False``: when a buffer fills, the newest events are dropped (and counted), not the
        oldest overwritten: what comes first (a set-up) is kept."""
        self.write("trace_clock", clock)
        self.write("buffer_size_kb", str(buffer_kb))
        self.write("options/overwrite", "1" if overwrite else "0")
        self.header = parse_header_page(_read(os.path.join(self.session.root, "events", "header_page")))
        sub = os.path.join(self.path, "buffer_subbuf_size_kb")
        self.subbuf = int(_read(sub)) * 1024 if os.path.exists(sub) else os.sysconf("SC_PAGE_SIZE")
        per_cpu = os.path.join(self.path, "per_cpu")
        for entry in sorted(os.listdir(per_cpu)):
            if entry.startswith("cpu") and entry[3:].isdigit():
                cpu = int(entry[3:])
                self.readers[cpu] = os.open(os.path.join(per_cpu, entry, "trace_pipe_raw"),
                                            os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
                self.pending[cpu] = []
                self.pages[cpu] = []
        self.write("tracing_on", "1")

    def stop(self) -> None:
        """Tracing off (the record stays readable)."""
        self.write("tracing_on", "0")

    def read(self) -> int:
        """Take what every CPU has recorded out of the kernel's buffers, as pages, without decoding them
        (cheap: a caller that must stay quick reads often and decodes when it needs the records);
        returns the bytes kept so far, not yet decoded."""
        assert self.header is not None
        for cpu, fd in self.readers.items():
            pages = self.pages[cpu]
            while True:
                try:
                    page = os.read(fd, self.subbuf)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == _errno.EINTR:
                        continue
                    raise
                if not page:
                    break
                # Only what the page holds (a page read while its CPU writes to it is partly empty).
                commit = int.from_bytes(page[self.header.commit_offset:self.header.commit_offset
                                             + self.header.commit_size], "little")
                used = self.header.data_offset + (commit & ~(_MISSED_EVENTS | _MISSED_STORED) & 0xFFFFFFFF)
                if commit & _MISSED_STORED:
                    used += 8
                pages.append(page[:used])
                self.backlog += used
        return self.backlog

    def drain(self, final: bool = False, slack_ns: int = COMMIT_SLACK_NS) -> list[Record]:
        """Read and decode what every CPU has recorded and return the records in timestamp order, up to
        the watermark (every record older than the read's start, less ``slack_ns``: a record that old
        has been committed on whatever CPU wrote it); ``final`` (after ``stop``) returns everything."""
        assert self.header is not None
        mark = time.monotonic_ns() - slack_ns
        self.read()
        for cpu, pages in self.pages.items():
            got = self.pending[cpu]
            for page in pages:
                lost = decode_page(page, self.header, cpu, self.layouts, got)
                if lost > 0:
                    self.lost_in_pages += lost
                elif lost < 0:
                    self.lost_uncounted = True
            pages.clear()
        self.backlog = 0
        if final:
            ready = list(heapq.merge(*self.pending.values()))
            for got in self.pending.values():
                got.clear()
            return ready
        parts = []
        for cpu, got in self.pending.items():
            k = _bisect_ts(got, mark)
            parts.append(got[:k])
            self.pending[cpu] = got[k:]
        return list(heapq.merge(*parts))

    def overruns(self) -> int:
        """Events the kernel could not keep (overwritten, or dropped on a full buffer), as far as counted."""
        total = self.lost_in_pages
        per_cpu = os.path.join(self.path, "per_cpu")
        for cpu in self.readers:
            try:
                for line in _read(os.path.join(per_cpu, f"cpu{cpu}", "stats")).splitlines():
                    if line.startswith(("overrun:", "dropped events:")):
                        total += int(line.split()[-1])
            except OSError:
                pass
        return total

    def remove(self) -> None:
        """Close the readers, tracing off, and remove the instance (the kernel frees its buffers).
        Idempotent; when the mount it was made through is gone, through another (see Session)."""
        if self.removed:
            return
        self.removed = True
        for fd in self.readers.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.readers.clear()
        self.session.remove_instance(self.name)


def _bisect_ts(records: list[Record], mark: int) -> int:
    lo, hi = 0, len(records)
    while lo < hi:
        mid = (lo + hi) // 2
        if records[mid].ts < mark:
            lo = mid + 1
        else:
            hi = mid
    return lo


# --- the session: a mount and our instances ----------------------------------------------------------

_LIVE: list[Session] = []
_LIVE_LOCK = threading.Lock()
_SAVED_HANDLERS: dict[int, Any] = {}


def _teardown_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for session in live:
        session.close()


def _on_fatal_signal(signum: int, _frame: Any) -> None:
    """SIGTERM/SIGHUP with no handler of the program's own: remove what we made, then die of the signal
    as the program would have."""
    _teardown_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _guard_signals() -> None:
    """While a session is open, SIGTERM/SIGHUP left at their default would kill us with our instance in
    the kernel: catch them (only those at SIG_DFL, only from the main thread)."""
    if threading.current_thread() is not threading.main_thread() or _SAVED_HANDLERS:
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            _SAVED_HANDLERS[sig] = signal.signal(sig, _on_fatal_signal)


def _unguard_signals() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, old in list(_SAVED_HANDLERS.items()):
        if signal.getsignal(sig) == _on_fatal_signal:
            signal.signal(sig, old)
        del _SAVED_HANDLERS[sig]


atexit.register(_teardown_all)


@dataclass(eq=False)
class Session:
    """tracefs opened for one user of it: the mount (shared, or our private one) and our instances."""

    root: str
    mounted_here: str | None = None
    instances: list[Instance] = field(default_factory=list)
    closed: bool = False
    owner: tuple[int, int] = (0, 0)

    @classmethod
    def open(cls) -> Session:
        """Find tracefs (or mount it privately), remove dead minivmm processes' leftovers."""
        pid = os.getpid()
        start = _start_time(pid) or 0
        mounts = _tracefs_mounts()
        root = next((m for m in STANDARD_MOUNTS if m in mounts), None)
        session = cls(root or "", owner=(pid, start))
        with _LIVE_LOCK:
            _LIVE.append(session)
        _guard_signals()
        try:
            if root is None:
                session.mounted_here = make_private_directory(f"minivmm-tracefs-{pid}-{start}-")
                proc = subprocess.run(["mount", "-t", "tracefs", "nodev", session.mounted_here],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise TracefsUnavailable(f"cannot mount tracefs: {proc.stderr.strip() or 'permission denied'}")
                session.root = session.mounted_here
            if not os.path.isdir(os.path.join(session.root, "instances")):
                raise TracefsUnavailable("this kernel's tracefs has no instances")
            try:
                remove_stale(session.root)
            except OSError:
                pass  # hygiene only: a leftover we cannot remove does not stop this run
        except BaseException:
            session.close()
            raise
        return session

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def instance(self, purpose: str) -> Instance:
        """Make a private instance ``minivmm-PID-START-PURPOSE-XXXXXX``."""
        if not re.fullmatch(r"[a-z]+", purpose):
            raise ValueError(f"instance purpose {purpose!r}: lower-case letters only")
        pid, start = self.owner
        name = f"minivmm-{pid}-{start}-{purpose}-{os.urandom(3).hex()}"
        path = os.path.join(self.root, "instances", name)
        try:
            os.mkdir(path)
        except OSError as e:
            raise TracefsUnavailable(f"cannot make a trace instance: {e.strerror}") from None
        inst = Instance(self, path, name)
        self.instances.append(inst)
        return inst

    def remove_instance(self, name: str) -> None:
        """Tracing off and rmdir, through our mount or, if it was unmounted meanwhile, any tracefs mount
        that shows the instance (instances are global to the kernel), or a mount made for that."""
        path = next((p for p in [os.path.join(self.root, "instances", name)]
                     + [os.path.join(m, "instances", name) for m in _tracefs_mounts()] if os.path.isdir(p)), None)
        extra = None
        if path is None:
            pid, start = self.owner
            extra = make_private_directory(f"minivmm-tracefs-{pid}-{start}-")
            subprocess.run(["mount", "-t", "tracefs", "nodev", extra], capture_output=True)
            candidate = os.path.join(extra, "instances", name)
            path = candidate if os.path.isdir(candidate) else None
        if path is not None:
            try:
                _write(os.path.join(path, "tracing_on"), "0")
            except OSError:
                pass
            try:
                os.rmdir(path)
            except OSError:
                pass
        if extra is not None:
            _umount(extra)
            try:
                os.rmdir(extra)
            except OSError:
                pass

    def close(self) -> None:
        """Remove every instance of ours and our mount; safe to call more than once, from any path."""
        if self.closed:
            return
        self.closed = True
        for inst in self.instances:
            inst.remove()
        if self.mounted_here:
            # Unmounted whether or not the mount was known to succeed (an interrupt may have come between
            # mount's success and our noting it); umount of a plain directory just fails.
            _umount(self.mounted_here)
            try:
                os.rmdir(self.mounted_here)
            except OSError:
                pass
            self.mounted_here = None
        with _LIVE_LOCK:
            if self in _LIVE:
                _LIVE.remove(self)
            last = not _LIVE
        if last:
            _unguard_signals()
