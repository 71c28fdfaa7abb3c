"""The tracer on a static C program with a known KVM set-up (tests/trace_prog.c, built here with
``gcc -static``): decoding, fd roles, pass-through of exit codes and signals, forks, and that non-KVM
system calls never stop the tracee. No assertion on a host timing figure; only relations that hold
whatever the host's speed (an interval the kernel measured lies inside the one the program measured)."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading

import pytest

from minivmm.trace.kclock import ENTER, EXIT, spans_of
from minivmm.trace.syscalls import SpawnError
from minivmm.trace.tracer import Clock, StopReason, Tracer
from minivmm.tracefs import Record

pytestmark = pytest.mark.kvm


def self_timings(err: str) -> list[tuple[str, int]]:
    """The program's own "self NAME NS" lines."""
    return [(p[1], int(p[2])) for line in err.splitlines() if (p := line.split()) and p[0] == "self"]


def trace(prog: str, *args: str, **kw: object) -> Tracer:
    t = Tracer(prog, [prog, *args], **kw)  # type: ignore[arg-type]
    t.run()
    return t


def test_decodes_the_known_sequence_with_fd_roles(trace_prog: str, capfd: pytest.CaptureFixture[str]) -> None:
    t = trace(trace_prog, "4", "0")
    r = t.result
    assert r is not None and r.exit_code == 0 and r.stop_reason is StopReason.EXITED
    names = [e.name for e in r.events]
    assert names == ["KVM_GET_API_VERSION", "KVM_CREATE_VM"] + ["KVM_IOEVENTFD"] * 4 + [
        "KVM_SET_USER_MEMORY_REGION", "KVM_CREATE_VCPU"]
    assert [e.role for e in r.events] == ["system", "system"] + ["vm"] * 6
    io = [e.decoded.fields for e in r.events if e.name == "KVM_IOEVENTFD"]
    assert [(f["addr"], f["len"], f["datamatch"], f["pio"], f["deassign"]) for f in io] == [
        (0xD0000050, 4, 0, False, False), (0xD0000050, 4, 1, False, False),
        (0xD0001050, 4, 0, False, False), (0xD0001050, 4, 1, False, False)]
    mem = r.events[6].decoded.fields
    assert (mem["slot"], mem["guest_phys_addr"], mem["memory_size"], mem["readonly"]) == (0, 0, 2 << 20, False)
    vcpu = r.events[7]
    assert vcpu.vcpu_id == 0 and vcpu.ret is not None and vcpu.ret > 2
    assert t.procs[r.pid].fds.roles[vcpu.ret] == "vcpu0"
    assert all(e.ret is not None and e.ret >= 0 for e in r.events)
    assert "done 4" in capfd.readouterr().out


def test_a_discarded_programs_output_goes_to_dev_null_not_ours(trace_prog: str,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    """discard_output (a harness starting a VMM run after run): the program writes to /dev/null, and our
    own standard output and error stay ours (the tracer's parent never redirects them)."""
    t = trace(trace_prog, "4", "0", discard_output=True)
    r = t.result
    assert r is not None and r.exit_code == 0 and len(r.events) == 8
    out, err = capfd.readouterr()
    assert "done 4" not in out and "self " not in err
    print("still ours")
    assert capfd.readouterr().out == "still ours\n"


def test_memory_region2_is_decoded_and_replayed_as_a_memslot(trace_prog: str,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    """QEMU uses KVM_SET_USER_MEMORY_REGION2 where the kernel has KVM_CAP_USER_MEMORY2: the larger
    struct is decoded (guest_memfd fields too) and the sequence op it replays as is a memslot."""
    from minivmm.trace.explain import event_to_step
    r = trace(trace_prog, "2", "0", "region2").result
    assert r is not None
    if r.exit_code == 6:
        pytest.skip("this kernel (or its headers) has no KVM_SET_USER_MEMORY_REGION2")
    assert r.exit_code == 0, capfd.readouterr().err  # 7: offered by the kernel, and refused
    ev = next(e for e in r.events if e.name == "KVM_SET_USER_MEMORY_REGION2")
    f = ev.decoded.fields
    assert (f["slot"], f["guest_phys_addr"], f["memory_size"], f["readonly"]) == (1, 0x100000000, 2 << 20, True)
    assert (f["guest_memfd"], f["guest_memfd_offset"]) == (0, 0)
    assert "guest_memfd=0" in ev.decoded.text and "KVM_MEM_READONLY" in ev.decoded.text
    op, args = event_to_step(ev) or ("", {})
    assert op == "memslot" and (args["slot"], args["base"], args["size"]) == (1, 0x100000000, 2 << 20)


def test_non_kvm_syscalls_never_stop_the_tracee(trace_prog: str, capfd: pytest.CaptureFixture[str]) -> None:
    """The program makes 2000 non-KVM system calls (1000 of them ioctls); the tracer stops it only for
    its 8 KVM ioctls, once each with the kernel clock (twice with the tracer's), and a few start-up
    and exit events."""
    r = trace(trace_prog, "4", "0").result
    assert r is not None
    assert len(r.events) == 8
    assert r.stops <= (1 if r.clock is Clock.KERNEL else 2) * len(r.events) + 6
    r = trace(trace_prog, "4", "0", clock="ptrace").result
    assert r is not None and r.stops <= 2 * len(r.events) + 6


def test_kernel_interval_lies_inside_the_programs_own(trace_prog: str, capfd: pytest.CaptureFixture[str]) -> None:
    r = trace(trace_prog, "6", "0").result
    own = self_timings(capfd.readouterr().err)
    assert r is not None and [n for n, _ in own] == [e.name for e in r.events]
    if r.clock is not Clock.KERNEL:
        pytest.skip(f"the kernel clock is unavailable here: {r.clock_note}")
    for ev, (_, ns) in zip(r.events, own):
        assert ev.clock is Clock.KERNEL
        assert ev.duration_ns is not None and 0 < ev.duration_ns <= ns


def test_exit_code_passes_through(trace_prog: str, capfd: pytest.CaptureFixture[str]) -> None:
    r = trace(trace_prog, "1", "7").result
    assert r is not None and r.exit_code == 7 and r.exit_signal is None


def test_signals_pass_through(trace_prog: str, capfd: pytest.CaptureFixture[str]) -> None:
    """SIGUSR1 reaches the program's handler (else it exits 4); SIGTERM kills it as it would untraced."""
    r = trace(trace_prog, "1", "0", "signal").result
    assert r is not None and r.exit_signal == signal.SIGTERM and r.exit_code is None
    assert [s for _, s in r.signals] == [signal.SIGUSR1, signal.SIGTERM]


def test_a_ctrl_c_after_the_program_reached_its_stop_is_kept(trace_prog: str, monkeypatch: pytest.MonkeyPatch,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    """A SIGINT that comes while the tracer finishes (the program already gone) changes no stop reason,
    but the result says it came: a caller tracing again and again (scripts/differential.py --vmm) must
    stop, not lose it."""
    finish = Tracer._finish_teardown

    def finish_then_ctrl_c(self: Tracer) -> None:
        finish(self)
        # To this thread (the tracer's): a process-wide kill may land on another thread of the test
        # process, and its handler then run only after run() has put the test runner's back.
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    quiet = trace(trace_prog, "1", "0").result
    assert quiet is not None and quiet.interrupted_by is None
    monkeypatch.setattr(Tracer, "_finish_teardown", finish_then_ctrl_c)
    late = trace(trace_prog, "1", "0").result
    assert late is not None and late.stop_reason is StopReason.EXITED and late.interrupted_by == "SIGINT"


def test_follows_a_fork_and_exec(trace_prog: str, capfd: pytest.CaptureFixture[str]) -> None:
    r = trace(trace_prog, "2", "5", "fork").result
    assert r is not None and r.exit_code == 5
    assert len(r.forks) == 1 and r.forks[0][0] == r.pid
    child = r.forks[0][1]
    assert [e.pid for e in r.events] == [child] * 6
    assert [e.role for e in r.events][:3] == ["system", "system", "vm"]
    assert len(r.execs) == 1


def test_ptrace_clock_fallback(trace_prog: str, capfd: pytest.CaptureFixture[str]) -> None:
    r = trace(trace_prog, "2", "0", clock="ptrace").result
    assert r is not None and r.clock is Clock.PTRACE
    assert all(e.clock is Clock.PTRACE and e.duration_ns and e.duration_ns > 0 for e in r.events)
    own = self_timings(capfd.readouterr().err)
    # The stops bracket the call from outside: the program's own interval lies inside the tracer's
    # for the calls it stops at both ends.
    assert len(own) == len(r.events)


def test_exec_failure_is_one_error_and_leaves_nothing(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "notelf"
    bad.write_bytes(b"\x00\x01garbage")
    bad.chmod(0o755)
    with pytest.raises(SpawnError) as e:
        trace(str(bad))
    assert e.value.stage == "execve"
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_an_output_the_child_cannot_take_is_one_error_and_leaves_nothing() -> None:
    from minivmm.trace.syscalls import spawn
    fd = 1000  # not open here (nor reused by spawn's own pipe): the child's dup2() fails
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(SpawnError) as e:
        spawn("/bin/true", ["true"], dict(os.environ), fd)
    assert e.value.stage == "redirecting its output"
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_until_first_run_on_minivmm_boot(capfd: pytest.CaptureFixture[str]) -> None:
    """minivmm's own boot as the traced VMM: its vCPU thread's first KVM_RUN is recorded (with the
    return of its first exit), then the VMM is ended with SIGTERM, which it reports as such."""
    import sys
    root = pathlib.Path(__file__).resolve().parent.parent
    argv = [sys.executable, "-m", "minivmm", "boot", str(root / "guest" / "hello.bin")]
    r = trace(argv[0], *argv[1:], until_first_run=True, timeout_s=60).result
    assert r is not None and r.stop_reason is StopReason.FIRST_RUN and r.ended_by_tracer
    assert r.exit_code is not None  # minivmm boot ended by its stop handler (143), not killed
    runs = [e for e in r.events if e.name == "KVM_RUN"]
    assert len(runs) == 1 and runs[0].first_run and runs[0].role == "vcpu0" and runs[0].ret == 0
    assert runs[0].tid != r.pid  # the vCPU thread, followed through clone
    assert [e.name for e in r.events].index("KVM_CREATE_VCPU") < r.events.index(runs[0])


def test_spans_pair_each_thread_s_enter_with_its_exit() -> None:
    """Two threads interleaved; an exit whose enter was lost is dropped, not paired with the wrong call."""
    recs = [Record(10, 0, ENTER, 42, (5, 0xAE03)), Record(11, 1, ENTER, 43, (6, 0xAE41)),
            Record(12, 1, EXIT, 43, (0,)), Record(19, 0, EXIT, 42, (7,)),
            Record(20, 0, EXIT, 42, (-25,)),  # its enter was not recorded
            Record(30, 1, ENTER, 42, (0xFFFFFFFF00000009, 0xAE01)), Record(31, 0, EXIT, 42, (-9,))]
    spans = spans_of(recs)
    assert [(s.fd, s.request, s.enter_ns, s.exit_ns, s.ret) for s in spans[42]] == [
        (5, 0xAE03, 10, 19, 7), (9, 0xAE01, 30, 31, -9)]
    assert [(s.fd, s.enter_ns, s.exit_ns, s.ret) for s in spans[43]] == [(6, 11, 12, 0)]


def test_a_killed_run_s_instance_is_removed_by_the_next(trace_prog: str, capfd: pytest.CaptureFixture[str]) -> None:
    """What a SIGKILLed minivmm trace leaves (its trace instance, its private mount) is recognised by the
    dead owner in its name and removed when the next one opens tracefs; a live owner's is kept; a whole
    run leaves nothing of its own behind."""
    from minivmm.trace import kclock
    from minivmm.tracefs import _start_time
    victim = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    start = _start_time(victim.pid)
    dead_name = f"minivmm-{victim.pid}-{start}-trace-abcdef"
    live = subprocess.Popen(["sleep", "60"])
    live_name = f"minivmm-{live.pid}-{_start_time(live.pid)}-trace-abcdef"
    clock = kclock.KernelClock.open([os.getpid()])
    instances = os.path.join(clock.root, "instances")
    try:
        os.mkdir(os.path.join(instances, dead_name))
        os.mkdir(os.path.join(instances, live_name))
        victim.kill()
        victim.wait()
    finally:
        clock.close()
    again = kclock.KernelClock.open([os.getpid()])
    try:
        names = os.listdir(os.path.join(again.root, "instances"))
        assert dead_name not in names and live_name in names
        mine = [n for n in names if n.startswith(f"minivmm-{os.getpid()}-")]
        assert again.session is not None and sorted(mine) == sorted(i.name for i in again.session.instances)
    finally:
        os.rmdir(os.path.join(again.root, "instances", live_name))
        again.close()
        live.kill()
        live.wait()
    r = trace(trace_prog, "1", "0").result
    assert r is not None and r.clock is Clock.KERNEL
    with open("/proc/mounts") as f:
        assert f"minivmm-tracefs-{os.getpid()}-" not in f.read()



def _run_filter(program: list[tuple[int, int, int, int]], data: bytes) -> int:
    """Classic BPF as the kernel runs a seccomp filter (the few instructions the filter uses)."""
    import struct as _struct

    from minivmm.trace.syscalls import lib
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == lib.BPF_LD | lib.BPF_W | lib.BPF_ABS:
            acc = _struct.unpack_from("<I", data, k)[0]
        elif code == lib.BPF_ALU | lib.BPF_AND | lib.BPF_K:
            acc &= k
        elif code == lib.BPF_JMP | lib.BPF_JEQ | lib.BPF_K:
            pc += jt if acc == k else jf
        elif code == lib.BPF_RET | lib.BPF_K:
            return k
        else:
            raise AssertionError(f"instruction {code:#x} not interpreted here")


def test_the_filter_stops_kvm_ioctls_in_every_x86_abi_and_nothing_else() -> None:
    from minivmm.trace.syscalls import ffi, lib, seccomp_program
    program = seccomp_program()

    def verdict(arch: int, nr: int, request: int) -> str:
        d = ffi.new("struct seccomp_data *")
        d.nr, d.arch, d.args[0], d.args[1] = nr, arch, 3, request
        ret = _run_filter(program, bytes(ffi.buffer(d)))
        return {lib.SECCOMP_RET_TRACE: "trace", lib.SECCOMP_RET_ALLOW: "allow"}[ret]

    x64, i386 = lib.AUDIT_ARCH_X86_64, lib.AUDIT_ARCH_I386
    kvm, tty = 0xAE01, 0x5413  # KVM_CREATE_VM, TIOCGWINSZ
    assert verdict(x64, lib.SYS_ioctl, kvm) == "trace"
    assert verdict(x64, lib.SYS_ioctl, 0xFFFFFFFF_0000AE80) == "trace"   # only the low 32 bits count
    assert verdict(x64, lib.SYS_ioctl, tty) == "allow"
    assert verdict(x64, lib.MINIVMM_NR_IOCTL_X32, kvm) == "trace"
    assert verdict(i386, lib.MINIVMM_NR_IOCTL_I386, kvm) == "trace"
    assert verdict(i386, lib.MINIVMM_NR_IOCTL_I386, tty) == "allow"
    assert verdict(i386, lib.SYS_ioctl, kvm) == "allow"                  # 16 is not ioctl on i386
    assert verdict(x64, lib.MINIVMM_NR_IOCTL_I386, kvm) == "allow"       # 54 is setsockopt on x86-64
    assert verdict(0xC00000B7, lib.SYS_ioctl, kvm) == "allow"            # another architecture


@pytest.fixture(scope="session")
def i386_prog(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The test program built for i386 (gcc -m32 -static: gcc-multilib), skipped where it cannot be."""
    out = tmp_path_factory.mktemp("trace32") / "trace_prog32"
    src = pathlib.Path(__file__).with_name("trace_prog.c")
    proc = subprocess.run(["gcc", "-m32", "-static", "-O2", "-o", str(out), str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"no i386 static build here (gcc-multilib): {proc.stderr.strip()[:200]}")
    if subprocess.run([str(out), "0", "0"], capture_output=True).returncode == 126:
        pytest.skip("this kernel runs no i386 programs")
    return str(out)


def test_an_i386_program_is_traced_and_decoded(i386_prog: str, capfd: pytest.CaptureFixture[str]) -> None:
    """A 32-bit program's KVM ioctls stop it too (the filter knows i386's ioctl number), its registers and
    return values are read as i386's, and its structs decode; the syscall tracepoints do not report
    32-bit calls, so they are timed by the tracer's stops."""
    r = trace(i386_prog, "4", "3").result
    assert r is not None and r.exit_code == 3
    assert [e.name for e in r.events] == ["KVM_GET_API_VERSION", "KVM_CREATE_VM"] + ["KVM_IOEVENTFD"] * 4 + [
        "KVM_SET_USER_MEMORY_REGION", "KVM_CREATE_VCPU"]
    assert [e.role for e in r.events] == ["system", "system"] + ["vm"] * 6
    io = [e.decoded.fields for e in r.events if e.name == "KVM_IOEVENTFD"]
    assert [(f["addr"], f["datamatch"]) for f in io] == [(0xD0000050, 0), (0xD0000050, 1), (0xD0001050, 0),
                                                          (0xD0001050, 1)]
    mem = r.events[6].decoded.fields
    assert (mem["slot"], mem["memory_size"]) == (0, 2 << 20) and 0 < mem["userspace_addr"] < 1 << 32
    assert r.events[0].ret == 12 and all(e.ret is not None and e.ret >= 0 for e in r.events)
    assert all(e.clock is Clock.PTRACE and e.duration_ns and e.duration_ns > 0 for e in r.events)
    assert r.compat_calls == len(r.events)


def test_i386_lays_out_the_decoded_structs_as_x86_64_does(tmp_path: pathlib.Path) -> None:
    """The decoder reads every argument struct with the x86-64 layout: the i386 compiler's sizes and
    offsets are the same (KVM's uapi keeps them so), checked for each decoded struct and field."""
    from minivmm.kvm.uapi import ffi
    from minivmm.trace import decode
    lines, expected = [], []
    for ctype in sorted({struct.ctype for struct in decode.STRUCTS.values()}):
        lines.append(f'printf("%zu\\n", sizeof({ctype}));')
        expected.append(ffi.sizeof(ctype))
        for name, f in ffi.typeof(ctype).fields:
            if name:
                lines.append(f'printf("%zu\\n", offsetof({ctype}, {name}));')
                expected.append(f.offset)
    src = tmp_path / "layout.c"
    src.write_text("#include <stddef.h>\n#include <stdio.h>\n#include <linux/kvm.h>\nint main(void)\n{\n"
                   + "\n".join(lines) + "\nreturn 0;\n}\n")
    exe = tmp_path / "layout"
    proc = subprocess.run(["gcc", "-m32", "-o", str(exe), str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"no i386 build here (gcc-multilib): {proc.stderr.strip()[:200]}")
    got = [int(x) for x in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    assert got == expected
