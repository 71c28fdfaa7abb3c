"""The kernel's own timestamps of the tracee's ioctls: ``raw_syscalls:sys_enter``/``sys_exit`` in a private
tracefs instance.

Why these and not the ptrace stops: the kernel fires ``sys_enter`` after the seccomp filter (so after
the tracer has resumed the tracee from its seccomp stop) and ``sys_exit`` before the syscall-exit
stop, so the tracer's own latency is outside the interval. The instance uses ``trace_clock=mono``
(CLOCK_MONOTONIC, the clock the ptrace fallback uses too), follows the tracee's threads and children
(``set_event_pid`` + ``event-fork``) and records only ``ioctl`` (a filter on the syscall number).

The text of ``trace`` shows timestamps in microseconds; the ``raw`` option shows them in nanoseconds
but without the arguments. ``trace`` is not consumed by reading, so it is read once each way and the
two views are zipped line by line (both list the same events in the same order).

The instance (and the tracefs mount, if we made it) is removed in every case: :class:`KernelClock` is
a context manager, and ``close()`` is idempotent. tracefs is used where the system mounts it, else on a
private mount of our own (never on another program's temporary mount, whose unmounting our open files
would block). Both names carry the tracer's pid, so what a killed run left behind is recognised and
removed by the next one.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

from minivmm.trace.syscalls import lib

BUFFER_KB_PER_CPU = 16384
_TEXT = re.compile(r"^\s*.*?-(\d+)\s+\[\d+\].*?(\d+)\.(\d{6}):\s+(sys_enter|sys_exit):\s+NR (\d+) (.*)$")
_RAW = re.compile(r"^(\d+) (\d+) (\d+) type: (\d+)")
_ENTER_ARGS = re.compile(r"^\(([0-9a-f]+), ([0-9a-f]+), ([0-9a-f]+)")
_EXIT_RET = re.compile(r"^= (-?\d+)")


class KernelClockUnavailable(RuntimeError):
    """tracefs or the raw_syscalls events cannot be used here; the message says why."""


@dataclass
class SyscallSpan:
    """One ioctl as the kernel saw it: thread, fd, request, enter/exit timestamps (ns), return value."""

    tid: int
    fd: int
    request: int
    enter_ns: int
    exit_ns: int | None = None
    ret: int | None = None


#: Where distributions mount tracefs. Only these are shared: another program's temporary mount is never
#: used, since our open files would keep it from being unmounted.
STANDARD_MOUNTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
#: Our own names: a private mount directory and trace instances, both carrying the tracer's pid.
MOUNT_PREFIX = "minivmm-trace-tracefs-"
INSTANCE_PREFIX = "minivmm-trace-"


def _find_tracefs() -> str | None:
    with open("/proc/mounts") as f:
        mounts = {parts[1] for line in f if len(parts := line.split()) > 2 and parts[2] == "tracefs"}
    return next((m for m in STANDARD_MOUNTS if m in mounts), None)


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _remove_stale(root: str) -> None:
    """Remove what an earlier minivmm trace left behind when it was killed (SIGKILL leaves no chance to
    clean up): our instances whose tracer pid is gone, and our private mounts likewise."""
    instances = os.path.join(root, "instances")
    for name in os.listdir(instances):
        rest = name[len(INSTANCE_PREFIX):].split("-", 1)[0] if name.startswith(INSTANCE_PREFIX) else ""
        if rest.isdigit() and not _pid_alive(int(rest)):
            try:
                _write(os.path.join(instances, name, "events", "raw_syscalls", "enable"), "0")
                os.rmdir(os.path.join(instances, name))
            except OSError:
                pass
    tmp = tempfile.gettempdir()
    with open("/proc/mounts") as f:
        ours = [p[1] for line in f if len(p := line.split()) > 2 and p[2] == "tracefs"
                and os.path.dirname(p[1]) == tmp and os.path.basename(p[1]).startswith(MOUNT_PREFIX)]
    for mount in ours:
        pid = os.path.basename(mount)[len(MOUNT_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            if subprocess.run(["umount", mount], capture_output=True).returncode == 0:
                try:
                    os.rmdir(mount)
                except OSError:
                    pass


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@dataclass
class KernelClock:
    """A private trace instance recording the ioctls of one process tree."""

    root: str = ""
    instance: str = ""
    mounted_here: str | None = None
    spans: dict[int, list[SyscallSpan]] = field(default_factory=dict)
    overruns: int = 0
    closed: bool = False

    @classmethod
    def open(cls, pid: int) -> KernelClock:
        """Mount tracefs if needed and arm an instance for ``pid`` (a stopped child, before its exec)."""
        root = _find_tracefs()
        clock = cls()
        if root is None:
            clock.mounted_here = tempfile.mkdtemp(prefix=f"{MOUNT_PREFIX}{os.getpid()}-")
            proc = subprocess.run(["mount", "-t", "tracefs", "nodev", clock.mounted_here],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                os.rmdir(clock.mounted_here)
                raise KernelClockUnavailable(f"cannot mount tracefs: {proc.stderr.strip() or 'permission denied'}")
            root = clock.mounted_here
        clock.root = root
        try:
            _remove_stale(root)
        except OSError:
            pass  # hygiene only: a leftover we cannot remove does not stop this run
        clock.instance = os.path.join(root, "instances", f"{INSTANCE_PREFIX}{os.getpid()}-{os.urandom(3).hex()}")
        try:
            events = os.path.join(root, "events", "raw_syscalls")
            if not os.path.isdir(events):
                raise KernelClockUnavailable("the kernel has no raw_syscalls tracepoints")
            os.mkdir(clock.instance)
            ev = os.path.join(clock.instance, "events", "raw_syscalls")
            _write(os.path.join(clock.instance, "trace_clock"), "mono")
            _write(os.path.join(clock.instance, "buffer_size_kb"), str(BUFFER_KB_PER_CPU))
            # When the buffer fills (a long run: every KVM_RUN is an ioctl), drop the newest events rather
            # than overwrite the oldest: the set-up, which is what is explained, comes first.
            _write(os.path.join(clock.instance, "options", "overwrite"), "0")
            for name in ("sys_enter", "sys_exit"):
                _write(os.path.join(ev, name, "filter"), f"id == {lib.SYS_ioctl}")
            _write(os.path.join(clock.instance, "options", "event-fork"), "1")
            _write(os.path.join(clock.instance, "set_event_pid"), str(pid))
            _write(os.path.join(ev, "enable"), "1")
            _write(os.path.join(clock.instance, "tracing_on"), "1")
        except KernelClockUnavailable:
            clock.close()
            raise
        except OSError as e:
            clock.close()
            raise KernelClockUnavailable(f"cannot set up a trace instance: {e.strerror}") from None
        return clock

    def __enter__(self) -> KernelClock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def collect(self) -> dict[int, list[SyscallSpan]]:
        """Stop recording, read the record (per thread, in order) and remove the instance."""
        try:
            _write(os.path.join(self.instance, "tracing_on"), "0")
            path = os.path.join(self.instance, "trace")
            with open(path) as f:
                text = [line for line in f if not line.startswith("#")]
            _write(os.path.join(self.instance, "options", "raw"), "1")
            with open(path) as f:
                raw = [line for line in f if not line.startswith("#")]
            per_cpu = os.path.join(self.instance, "per_cpu")
            for cpu in os.listdir(per_cpu):
                with open(os.path.join(per_cpu, cpu, "stats")) as f:
                    for line in f:
                        if line.startswith(("overrun:", "dropped events:")):
                            self.overruns += int(line.split()[-1])
        finally:
            self.close()
        self.spans = parse(text, raw)
        return self.spans

    def close(self) -> None:
        """Remove the instance and our mount; safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        if self.instance and os.path.isdir(self.instance):
            try:
                _write(os.path.join(self.instance, "events", "raw_syscalls", "enable"), "0")
            except OSError:
                pass
            try:
                os.rmdir(self.instance)
            except OSError:
                pass
        if self.mounted_here:
            subprocess.run(["umount", self.mounted_here], capture_output=True)
            try:
                os.rmdir(self.mounted_here)
            except OSError:
                pass
            self.mounted_here = None


def parse(text: list[str], raw: list[str]) -> dict[int, list[SyscallSpan]]:
    """Pair the two views of the record into per-thread enter/exit spans (see the module docstring).

    Only event lines are paired (a view may hold other lines, such as a lost-events marker). If the two
    views do not list the same events, the nanoseconds cannot be trusted to belong to the right line,
    and the text view's microsecond timestamps are used instead."""
    events = [m for line in text if (m := _TEXT.match(line))]
    stamps = [m for line in raw if (m := _RAW.match(line))]
    paired = len(events) == len(stamps) and all(t.group(1) == r.group(1) for t, r in zip(events, stamps))
    spans: dict[int, list[SyscallSpan]] = {}
    open_span: dict[int, SyscallSpan] = {}
    for k, t in enumerate(events):
        tid, kind, body = int(t.group(1)), t.group(4), t.group(6)
        ts = int(stamps[k].group(3)) if paired else int(t.group(2)) * 1_000_000_000 + int(t.group(3)) * 1000
        if kind == "sys_enter":
            a = _ENTER_ARGS.match(body)
            if not a:
                continue
            span = SyscallSpan(tid, int(a.group(1), 16), int(a.group(2), 16), ts)
            spans.setdefault(tid, []).append(span)
            open_span[tid] = span
        else:
            span_open = open_span.pop(tid, None)
            m = _EXIT_RET.match(body)
            if span_open is not None and m:
                span_open.exit_ns = ts
                span_open.ret = int(m.group(1))
    return spans
