"""The tracer's stop path in C (``minivmm_trace_wait`` and the stops it takes) and what steers it.

The C path may end a KVM ioctl's seccomp stop on its own (PTRACE_CONT) only where the tracer has said it
may, through ``struct minivmm_fast``: these tests hold the table to decode's structs, the per-fd bits to
"true in every traced process", and the traces it produces to those of the path that leaves every stop
to Python.
"""

from __future__ import annotations

import collections
import os
import pathlib
import subprocess
from typing import Any

import pytest

from minivmm._trace import lib
from minivmm.trace import decode
from minivmm.trace.tracer import Clock, Tracer, _fast_table, _Proc, _stop_struct


def test_the_table_gives_each_decoded_struct_its_size_and_leaves_shared_numbers_to_python() -> None:
    fast = _fast_table()
    by_nr = collections.Counter(request & 0xFF for request in decode.STRUCTS)
    assert decode.STRUCTS, "no decoded request: the table would say nothing"
    for request, struct in decode.STRUCTS.items():
        nr = request & 0xFF
        assert fast.request_of_nr[nr] in decode.STRUCTS
        if by_nr[nr] == 1:
            assert (fast.request_of_nr[nr], fast.size_of_nr[nr]) == (request, decode.struct_size(struct))
        else:
            assert fast.size_of_nr[nr] == -1  # two requests, one number: the tracer reads it itself
    assert fast.kvm_run == decode.KVM_RUN and fast.one_stop == 0
    assert not any(fast.link_known) and not any(fast.run_done)


def _tracer(**kw: object) -> Tracer:
    return Tracer("/bin/true", ["true"], **kw)  # type: ignore[arg-type]  # never run: its bookkeeping only


def test_an_fd_is_left_to_c_only_where_every_live_kvm_process_knows_it() -> None:
    t = _tracer()
    t._add(100, 100)
    a = t.procs[100]
    a.uses_kvm = True
    a.links[5] = 1
    t._refresh_fast(5)
    assert t._fast.link_known[5] == 1 and t._fast.run_done[5] == 0
    a.run_done.add(5)
    t._refresh_fast(5)
    assert t._fast.run_done[5] == 1
    t._add(200, 200)  # a second process (a fork): until it is known, its fds are C's to read
    assert t._fast.link_known[5] == 0 and t._fast.run_done[5] == 0
    t._refresh_fast(5)  # it has made no KVM ioctl: no say
    assert t._fast.link_known[5] == 1 and t._fast.run_done[5] == 1
    b = t.procs[200]
    b.uses_kvm = True  # its first KVM ioctl
    t._refresh_all()
    assert t._fast.link_known[5] == 0 and t._fast.run_done[5] == 0
    b.links[5] = 1
    t._refresh_fast(5)
    assert t._fast.link_known[5] == 1 and t._fast.run_done[5] == 0
    t._gone_ns[200] = 1  # the second process has exited: only the first counts
    t._refresh_fast(5)
    assert t._fast.run_done[5] == 1
    a.links.pop(5)  # the kernel recorded close(5)
    t._refresh_fast(5)
    assert t._fast.link_known[5] == 0
    t._refresh_fast(1 << 20)  # past the table: left to Python, no error
    t._add(101, 100)  # a thread of a known process changes nothing
    assert t._fast.run_done[5] == 1


def test_refreshing_every_fd_takes_what_every_kvm_process_shares() -> None:
    t = _tracer()
    for tgid, links, done in ((100, {3, 4, 7}, {7}), (200, {3, 7}, {7, 9}), (300, set(), set())):
        t._add(tgid, tgid)
        t.procs[tgid].links.update(dict.fromkeys(links, 1))
        t.procs[tgid].run_done.update(done)
        t.procs[tgid].uses_kvm = tgid != 300  # 300 never used KVM
    t._refresh_all()
    assert [fd for fd in range(16) if t._fast.link_known[fd]] == [3, 7]
    assert [fd for fd in range(16) if t._fast.run_done[fd]] == [7]


def test_an_exec_clears_every_fd() -> None:
    t = _tracer()
    t._add(100, 100)
    t.procs[100].uses_kvm = True
    for fd in (3, 4):
        t.procs[100].links[fd] = 1
        t._refresh_fast(fd)
    t._clear_fast()
    assert not any(t._fast.link_known) and not any(t._fast.run_done)


def test_attached_stops_are_never_left_to_c() -> None:
    t = _tracer(attach_pid=os.getpid())
    proc = _Proc(100)
    proc.links[5] = 1
    proc.run_done.add(5)
    proc.uses_kvm = True
    t.procs[100] = proc
    t._refresh_fast(5)
    t._refresh_all()
    assert t._fast.link_known[5] == 0 and t._fast.run_done[5] == 0


class _Counting(Tracer):
    """Counts the stops the C path resumed on its own; where it did not (the tracee still waits), reads
    the argument struct again the Python way and keeps what differs from what C took."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.ended_in_c: collections.Counter[str] = collections.Counter()
        self.struct_differs: list[int] = []

    def _on_syscall_exit(self, tid: int, now: int, resumed_with: int | None = None) -> None:
        self.ended_in_c["exit resumed" if resumed_with is not None else "exit left"] += 1
        super()._on_syscall_exit(tid, now, resumed_with)

    def _on_seccomp(self, stop: Any) -> None:
        self.ended_in_c["resumed" if stop.resumed else "left"] += 1
        self.ended_in_c["link read in C"] += stop.link_len >= 0
        if not stop.resumed and _stop_struct(stop) != decode.capture(stop.tid, stop.request, stop.arg):
            self.struct_differs.append(stop.request)
        super()._on_seccomp(stop)


def _events(t: Tracer) -> list[tuple[object, ...]]:
    """Each call as decoded, less what differs from run to run (the memslot's address: ASLR)."""
    assert t.result is not None
    return [(e.name, e.role, e.ret, {k: v for k, v in e.decoded.fields.items() if k != "userspace_addr"})
            for e in t.result.events]


@pytest.mark.kvm
def test_c_ends_the_stops_it_may_and_the_trace_is_the_same(trace_prog: str,  # noqa: F811
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    kernel = _Counting(trace_prog, [trace_prog, "6", "0"])
    kernel.run()
    if kernel.result is None or kernel.result.clock is not Clock.KERNEL:
        pytest.skip("the kernel clock is unavailable here (tracefs): every stop is the tracer's")
    # With the kernel clock every stop ends in C (an fd's first one after C has read its /proc link),
    # but a KVM_RUN's, and this program runs no vCPU.
    assert kernel.ended_in_c["resumed"] == len(kernel.result.events) == 10, kernel.ended_in_c
    assert kernel.ended_in_c["left"] == 0, kernel.ended_in_c
    slow = _Counting(trace_prog, [trace_prog, "6", "0"], clock="ptrace", poll_ns=0)
    slow.run()
    assert slow.ended_in_c["resumed"] == 0, slow.ended_in_c  # every call has an exit stop: none ends in C
    # ... where C reads the result and resumes (no KVM_RUN here, whose exit the tracer takes itself).
    assert slow.ended_in_c["exit resumed"] == len(slow.result.events) == 10, slow.ended_in_c  # type: ignore[union-attr]
    assert kernel.ended_in_c["exit resumed"] == 0  # the kernel clock: no exit stop at all
    assert slow.struct_differs == [] and kernel.struct_differs == []
    assert _events(kernel) == _events(slow)
    capfd.readouterr()


def test_the_stop_layout_has_room_for_every_decoded_struct() -> None:
    assert max(decode.struct_size(s) for s in decode.STRUCTS.values()) <= lib.MINIVMM_RAW_MAX


@pytest.mark.kvm
def test_a_shell_around_the_vmm_does_not_hold_the_c_path_back(trace_prog: str,  # noqa: F811
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    # sh forks the program and waits (the "; true" keeps it from exec'ing it): two processes, one of
    # which never makes a KVM ioctl.
    t = _Counting("/bin/sh", ["sh", "-c", f"{trace_prog} 6 0; true"])
    t.run()
    if t.result is None or t.result.clock is not Clock.KERNEL:
        pytest.skip("the kernel clock is unavailable here (tracefs)")
    assert len(t.result.forks) == 1 and len(t.result.events) == 10
    assert t.ended_in_c["resumed"] == 10, t.ended_in_c
    # Each fd's /proc link is read once, at its first call (the system fd's and the VM's), not at every
    # call because the shell does not know the VMM's fds.
    assert t.ended_in_c["link read in C"] == 2, t.ended_in_c
    capfd.readouterr()


class _CountingAttached(Tracer):
    """Counts the stops the tracer's Python saw (the others the C path passed on its own)."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.seen_by_python = 0

    def _handle(self, tid: int, status: int, now: int) -> None:
        self.seen_by_python += 1
        super()._handle(tid, status, now)


@pytest.mark.kvm
def test_attached_c_passes_other_system_calls_and_leaves_kvm_ioctls_to_python(trace_prog: str) -> None:  # noqa: F811
    vmm = subprocess.Popen([trace_prog, "attach"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    assert vmm.stdin is not None and vmm.stdout is not None
    try:
        assert vmm.stdout.readline().strip() == "ready"

        def go(_pid: int, _threads: int) -> None:
            vmm.stdin.write("x")  # type: ignore[union-attr]
            vmm.stdin.flush()  # type: ignore[union-attr]

        t = _CountingAttached("", ["attach"], attach_pid=vmm.pid, on_start=go, timeout_s=1.0)
        r = t.run()
        assert vmm.stdout.readline().strip() == "registered"
    finally:
        vmm.stdin.close()
        vmm.wait(timeout=30)
    # The three ioeventfd calls, each stopped at its entry and exit by the tracer's Python ...
    io = [(e.decoded.fields["addr"], e.decoded.fields["deassign"], e.ret)
          for e in r.events if e.name == "KVM_IOEVENTFD"]
    assert io == [(0x6008, False, 0), (0xFE003000, False, 0), (0x6008, True, 0)]
    # ... while the program's other system calls (eventfd, its writes to stderr and stdout, read) were
    # passed in C: every stop counts, and those never reached Python.
    assert r.stops - t.seen_by_python >= 6, (r.stops, t.seen_by_python)


def test_an_fd_is_named_by_its_proc_link() -> None:
    from minivmm.trace.fds import LINK_OTHER, LINK_SYSTEM, LINK_VM, kind_of_link
    assert kind_of_link("/dev/kvm") == LINK_SYSTEM
    assert kind_of_link("anon_inode:kvm-vm") == LINK_VM
    assert kind_of_link("anon_inode:kvm-vcpu:3") == 3
    for other in ("anon_inode:kvm-vcpu:", "anon_inode:kvm-vcpu:x", "/dev/kvmx", "socket:[123]", ""):
        assert kind_of_link(other) == LINK_OTHER, other


def test_the_tracer_polls_only_where_the_tracee_can_run_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    from minivmm.trace.tracer import poll_window
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert poll_window(50_000) == 50_000 and poll_window(0) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1})
    assert poll_window(50_000) == 0


def test_a_busy_host_is_told_by_its_recent_cpu_pressure(tmp_path: pathlib.Path) -> None:
    from minivmm.timing.pressure import busy_now, recent_pressure_pct
    psi = tmp_path / "cpu"
    psi.write_text("some avg10=63.09 avg60=53.99 avg300=42.94 total=9279535163\n"
                   "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert recent_pressure_pct(str(psi)) == 63.09 and busy_now(str(psi))
    psi.write_text("some avg10=3.10 avg60=2.00 avg300=1.00 total=1\n")
    assert not busy_now(str(psi))
    assert recent_pressure_pct(str(tmp_path / "none")) is None and not busy_now(str(tmp_path / "none"))


def test_runnable_tasks_are_read_from_loadavg(tmp_path: pathlib.Path) -> None:
    from minivmm.timing.pressure import runnable_tasks
    f = tmp_path / "loadavg"
    f.write_text("2.17 1.28 1.65 3/111 29573\n")
    assert runnable_tasks(str(f)) == 3
    f.write_text("garbage\n")
    assert runnable_tasks(str(f)) is None and runnable_tasks(str(tmp_path / "none")) is None
    assert (runnable_tasks() or 0) >= 1  # this process, reading it, is running


def test_a_pressure_window_laps_from_one_read(tmp_path: pathlib.Path) -> None:
    from minivmm.timing.pressure import PressureWindow
    psi = tmp_path / "cpu"
    psi.write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=1000\n")
    w = PressureWindow(1000, 0, str(psi))
    pct, following = w.lap()
    assert pct == 0.0 and following.start_total_us == 1000 and following.start_ns > 0
    psi.write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=1000000000000\n")
    pct, after = following.lap()
    assert pct == 100.0 and after.start_total_us == 1000000000000  # capped at the window's wall time
    psi.unlink()
    assert after.lap()[0] is None and after.lap()[1].start_total_us is None
