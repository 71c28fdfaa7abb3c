"""minivmm.tracefs: the ring-buffer page decoder on synthetic pages, the names it owns, and on a real
tracefs (where this host allows it): events recorded and read back in order, leftovers of dead owners
removed (and only theirs), teardown at exit and on SIGTERM."""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import tempfile

import pytest

from minivmm import tracefs
from minivmm.tracefs import EventLayout, PageHeader, Record, decode_page, owner_of

HEADER = PageHeader(commit_offset=8, commit_size=8, data_offset=16)
LAYOUTS = {7: EventLayout("sys/ev", struct.Struct("<xxxxiQ"), 16)}


def _event(words: int, delta: int, payload: bytes) -> bytes:
    return struct.pack("<I", (delta << 5) | words) + payload


def _page(events: bytes, ts: int, flags: int = 0, tail: bytes = b"") -> bytes:
    data = events + tail
    return struct.pack("<QQ", ts, len(events) | flags) + data + bytes(4096 - 16 - len(data))


def _payload(ident: int, pid: int, value: int) -> bytes:
    return struct.pack("<HBBiQ", ident, 0, 0, pid, value)  # common_type, flags, preempt, pid, one field


def test_a_page_decodes_deltas_extends_large_events_and_skips_padding() -> None:
    events = (_event(4, 5, _payload(7, 42, 0xAA))                        # small: 4 words
              + _event(30, 3, struct.pack("<I", 1))                      # time extend: (1 << 27) + 3
              + _event(0, 2, struct.pack("<I", 20) + _payload(7, 43, 0xBB))  # large: length in array[0]
              + _event(29, 1, struct.pack("<I", 8) + b"\0" * 4)          # a discarded event (array[0]: length - 4)
              + _event(4, 7, _payload(9, 44, 0xCC))                      # an event nobody asked for
              + _event(31, 1000, struct.pack("<I", 0))                   # absolute timestamp: 1000
              + _event(4, 1, _payload(7, 45, 0xDD)))
    out: list[Record] = []
    assert decode_page(_page(events, ts=100), HEADER, 3, LAYOUTS, out) == 0
    assert out == [Record(105, 3, "sys/ev", 42, (0xAA,)), Record(105 + (1 << 27) + 3 + 2, 3, "sys/ev", 43, (0xBB,)),
                   Record(1001, 3, "sys/ev", 45, (0xDD,))]


def test_a_page_says_how_many_events_were_lost_before_it() -> None:
    events = _event(4, 1, _payload(7, 1, 1))
    out: list[Record] = []
    assert decode_page(_page(events, 0, flags=1 << 31 | 1 << 30, tail=struct.pack("<Q", 17)), HEADER, 0, LAYOUTS,
                       out) == 17
    assert decode_page(_page(events, 0, flags=1 << 31), HEADER, 0, LAYOUTS, out) == -1
    assert len(out) == 2


def test_an_empty_rest_of_page_ends_it() -> None:
    events = _event(4, 1, _payload(7, 1, 1)) + _event(29, 0, b"") + _event(4, 1, _payload(7, 2, 2))
    out: list[Record] = []
    decode_page(_page(events, 0), HEADER, 0, LAYOUTS, out)
    assert [r.pid for r in out] == [1]


def test_the_layout_comes_from_the_format_file() -> None:
    fmt = """name: sys_enter_ioctl
ID: 898
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:long ret;\toffset:24;\tsize:8;\tsigned:1;
"""
    ident, layout = tracefs.event_layout("syscalls/x", fmt, ["fd", "ret"])
    assert ident == 898
    raw = struct.pack("<HBBiiiQq", 898, 0, 0, 77, 16, 0, 5, -25)
    assert layout.unpack.unpack_from(raw) == (77, 5, -25)
    with pytest.raises(tracefs.TracefsUnavailable, match="no field nope"):
        tracefs.event_layout("syscalls/x", fmt, ["nope"])


def test_only_our_names_have_an_owner() -> None:
    assert owner_of("minivmm-123-456-trace-abcdef") == (123, 456)
    assert owner_of("minivmm-tracefs-123-456-ab_cd9ef") == (123, 456)
    assert owner_of("minivmm-trace-123-abcdef") == (123, None)      # earlier versions: pid only
    assert owner_of("minivmm-123-abcdef") == (123, None)
    assert owner_of("minivmm-tracefs-123-abcdefgh") == (123, None)
    for other in ("minivmm", "minivmm-abc-def", "perf-123-abcdef", "minivmm-123-456-trace-abcdefg",
                  "minivmm-123-456-Trace-abcdef", "xminivmm-123-456-trace-abcdef"):
        assert owner_of(other) is None


def _session() -> tracefs.Session:
    if os.geteuid() != 0:
        pytest.skip("tracefs needs root")
    try:
        return tracefs.Session.open()
    except tracefs.TracefsUnavailable as e:
        pytest.skip(f"tracefs not usable here: {e}")


def test_events_are_read_back_in_order_while_tracing_runs() -> None:
    import fcntl
    import termios
    with _session() as s:
        inst = s.instance("test")
        if not inst.has_event("syscalls/sys_enter_ioctl"):
            pytest.skip("no syscalls:sys_enter_ioctl tracepoint")
        inst.enable("syscalls/sys_enter_ioctl", ("fd", "cmd"), filter=f"cmd == {termios.TIOCGWINSZ}")
        inst.enable("syscalls/sys_exit_ioctl", ("ret",))
        inst.follow([os.getpid()])
        inst.start()
        r, w = os.pipe()
        for _ in range(50):
            try:
                fcntl.ioctl(r, termios.TIOCGWINSZ, b"\0" * 8)
            except OSError:
                pass
        got = inst.drain()          # up to the watermark: maybe not all yet
        inst.stop()
        got += inst.drain(final=True)
        os.close(r)
        os.close(w)
        enters = [x for x in got if x.event == "syscalls/sys_enter_ioctl"]
        assert len(enters) == 50 and {x.fields for x in enters} == {(r, termios.TIOCGWINSZ)}
        assert all(x.pid == os.getpid() for x in got)
        assert [x.ts for x in got] == sorted(x.ts for x in got)
        assert inst.overruns() == 0


def _instances(root: str) -> list[str]:
    return os.listdir(os.path.join(root, "instances"))


def test_leftovers_of_dead_owners_go_and_nothing_else() -> None:
    with _session() as s:
        instances = os.path.join(s.root, "instances")
        gone = subprocess.Popen(["true"])
        gone.wait()
        live = subprocess.Popen(["sleep", "60"])
        start = tracefs._start_time(live.pid)
        names = {"dead": f"minivmm-{gone.pid}-1-trace-abcdef", "legacy": f"minivmm-trace-{gone.pid}-abcdef",
                 "reused": f"minivmm-{live.pid}-{(start or 0) + 1}-trace-abcdef",  # pid reused: owner gone
                 "live": f"minivmm-{live.pid}-{start}-trace-abcdef", "foreign": "someone-elses-instance"}
        mount = tempfile.mkdtemp(prefix=f"minivmm-tracefs-{gone.pid}-1-")
        try:
            for n in names.values():
                os.mkdir(os.path.join(instances, n))
            assert subprocess.run(["mount", "-t", "tracefs", "nodev", mount]).returncode == 0
            with tracefs.Session.open() as other:
                left = _instances(other.root)
            assert names["live"] in left and names["foreign"] in left
            assert not {names["dead"], names["legacy"], names["reused"]} & set(left)
            assert mount not in tracefs._tracefs_mounts() and not os.path.exists(mount)
        finally:
            for n in (names["live"], names["foreign"]):
                if os.path.isdir(os.path.join(instances, n)):
                    os.rmdir(os.path.join(instances, n))
            live.kill()
            live.wait()
            if os.path.isdir(mount):
                subprocess.run(["umount", mount], capture_output=True)
                os.rmdir(mount)


_HOLDER = """
import sys, time
from minivmm import tracefs
s = tracefs.Session.open()
i = s.instance("test")
print(i.name, s.root, flush=True)
if sys.argv[1] == "wait":
    time.sleep(60)
"""


def _holder(mode: str) -> tuple[subprocess.Popen[str], str, str]:
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, mode], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], 60)
    assert ready, "the holder did not start"
    name, root = p.stdout.readline().split()
    return p, name, root


def test_an_instance_is_removed_at_exit_and_on_sigterm() -> None:
    with _session() as s:
        p, name, _ = _holder("exit")
        assert p.wait(timeout=60) == 0
        assert name not in _instances(s.root)
        p, name, _ = _holder("wait")
        assert name in _instances(s.root)
        p.terminate()
        assert p.wait(timeout=60) == -15  # died of the signal, as it would have without us
        assert name not in _instances(s.root)


def test_value_names_come_from_the_print_format() -> None:
    fmt = ('print fmt: "reason %s (%d)", REC->errno < 0 ? (REC->errno == -4 ? "restart" : "error") : '
           '__print_symbolic(REC->reason, { 0, "KVM_EXIT_" "UNKNOWN" }, { 2, "KVM_EXIT_" "IO" }, '
           '{ 0x6, "KVM_EXIT_" "MMIO" }), REC->errno < 0 ? -REC->errno : REC->reason\n')
    assert tracefs.print_symbols(fmt, "reason") == {0: "KVM_EXIT_UNKNOWN", 2: "KVM_EXIT_IO", 6: "KVM_EXIT_MMIO"}
    assert tracefs.print_symbols(fmt, "errno") == {}
