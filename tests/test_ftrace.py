"""The ftrace cross-check: the analysis on synthetic trace lines, and a real run where tracefs works."""

from __future__ import annotations

import pytest

from minivmm.cli.errors import outcome_exit_code
from minivmm.shadow.ftrace import analyse
from minivmm.tracefs import Record

_ts = iter(range(1000, 10**9, 10))


def rec(tid: int, event: str, *fields: int) -> Record:
    """One decoded event of the kvm tracepoints, as minivmm.tracefs hands them out (in time order)."""
    return Record(next(_ts), 1, f"kvm/{event}", tid, fields)


DB = 0xD0001000
WRITE, READ, UNSATISFIED = 2, 1, 0
EXIT_IO, EXIT_HLT, EXIT_MMIO = 2, 5, 6


def test_in_kernel_writes_exits_and_counts_agree():
    lines = [
        rec(7, "kvm_mmio", WRITE, 4, DB, 1),        # in kernel: next access follows
        rec(7, "kvm_mmio", WRITE, 4, DB, 2),        # in kernel: a read follows
        rec(7, "kvm_mmio", UNSATISFIED, 4, DB, 0),
        rec(7, "kvm_userspace_exit", EXIT_MMIO, 0),
        rec(7, "kvm_mmio", WRITE, 4, 0xD0002000, 5),  # exits
        rec(7, "kvm_userspace_exit", EXIT_MMIO, 0),
        rec(7, "kvm_pio", 1, 0xE9, 1, 1, 0x41),
        rec(7, "kvm_userspace_exit", EXIT_IO, 0),
        rec(7, "kvm_userspace_exit", 0, -4),        # a KVM_RUN interrupted by a signal: counted apart
    ]
    r = analyse(lines, 0, {"io": 1, "mmio": 2}, {DB: 2}, {DB})
    assert r.mismatches == [] and r.in_kernel_writes == {DB: 2}
    assert r.kernel_userspace_exits == {"KVM_EXIT_MMIO": 2, "KVM_EXIT_IO": 1, "restart": 1}


def test_each_kind_of_disagreement_is_reported():
    lines = [rec(7, "kvm_mmio", WRITE, 4, DB, 1),
             rec(7, "kvm_userspace_exit", EXIT_HLT, 0)]
    r = analyse(lines, 3, {"io": 1, "mmio": 0}, {DB: 2}, set())
    text = "\n".join(r.mismatches)
    assert "overran" in text                                     # lost events
    assert "KVM_EXIT_IO exits to userspace, the VMM saw 1" in text  # an exit the kernel did not record
    assert "counted 2 there" in text                             # eventfd vs trace
    assert "shadow never had a device" in text                   # in-kernel write the model cannot explain


@pytest.mark.kvm
def test_ftrace_cross_check_on_the_host(boot, guest_image):
    from minivmm.vmm.boot import Mode
    report, _ = boot(guest_image("regloop"), mode=Mode.PROTECTED, guest_iterations=64, ftrace=True)
    ft = report.extra["ftrace"]
    if "unavailable" in ft:
        pytest.skip(f"tracefs not usable here: {ft['unavailable']}")
    assert ft["mismatches"] == [], ft["mismatches"]
    assert ft["kernel_userspace_exits"]["KVM_EXIT_MMIO"] == ft["vmm_exits"]["mmio"] > 0
    assert sum(ft["in_kernel_writes"].values()) == 4 * 64
    assert outcome_exit_code(report.outcome) == 0


def _leftovers(pid: int) -> list[str]:
    """Trace instances of ``pid`` still in the kernel, and tracefs mounts of ours still mounted."""
    import os
    import subprocess
    import tempfile
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[2:3] == ["tracefs"]]
    # Only this process's own: the mount is named after the pid that made it, so that other minivmm
    # processes tracing at the same time (another test run, a `minivmm trace`) are not counted.
    left = [m for m in mounts if f"minivmm-tracefs-{pid}-" in m]
    shared = [m for m in mounts if "minivmm-tracefs-" not in m]  # not another run's private mount
    root, ours = (shared[0], None) if shared else (tempfile.mkdtemp(), True)
    try:
        if ours and subprocess.run(["mount", "-t", "tracefs", "nodev", root], capture_output=True).returncode:
            pytest.skip("cannot mount tracefs here")
        left += [i for i in os.listdir(os.path.join(root, "instances")) if i.startswith(f"minivmm-{pid}-")]
    finally:
        if ours:
            subprocess.run(["umount", root], capture_output=True)
            os.rmdir(root)
    return left


def test_an_interrupt_during_ftrace_start_up_leaves_nothing_behind(monkeypatch):
    import os

    from minivmm import tracefs
    from minivmm.shadow import ftrace
    try:
        ftrace.FtraceSession.start(os.getpid()).teardown()
    except ftrace.FtraceUnavailable as e:
        pytest.skip(f"tracefs not usable here: {e}")
    real_write = tracefs._write

    def interrupted(path: str, value: str) -> None:
        if path.endswith("set_event_pid"):
            raise KeyboardInterrupt  # as a Ctrl-C in the middle of arming the instance
        real_write(path, value)
    monkeypatch.setattr(tracefs, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ftrace.FtraceSession.start(os.getpid())
    assert _leftovers(os.getpid()) == []


@pytest.mark.kvm
@pytest.mark.slow
@pytest.mark.parametrize("run", range(6))
def test_sigint_at_any_moment_with_ftrace_removes_the_instance_and_mount(tmp_path, run):
    import random
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT
    from readiness import takes, wait_until
    from test_lifecycle import OUT_LOOP
    image = tmp_path / "outloop.bin"
    image.write_bytes(OUT_LOOP)
    proc = subprocess.Popen([sys.executable, "-m", "minivmm", "boot", str(image), "--vcpus", "32", "--ftrace",
                             "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(lambda: takes(proc.pid, signal.SIGTERM), "boot installed its stop handlers", proc)
        time.sleep(random.Random(run).uniform(0, 0.6))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if "ftrace     not available" in out:
        pytest.skip(out.split("ftrace     not available: ", 1)[1].splitlines()[0])
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert _leftovers(proc.pid) == []


def test_an_instance_removed_under_the_run_is_reported_not_raised():
    import os

    from minivmm.shadow import ftrace
    try:
        session = ftrace.FtraceSession.start(os.getpid())
    except ftrace.FtraceUnavailable as e:
        pytest.skip(f"tracefs not usable here: {e}")
    assert session.instance is not None
    for fd in session.instance.readers.values():
        os.close(fd)  # as if someone had removed the instance: its files are gone
    session.instance.readers.clear()
    os.rmdir(session.instance.path)
    with pytest.raises(ftrace.FtraceUnavailable, match="could not be read"):
        session.stop()
    assert _leftovers(os.getpid()) == []


def test_an_instance_whose_mount_was_unmounted_during_the_run_is_still_removed():
    import os
    import subprocess

    from minivmm.shadow import ftrace
    try:
        session = ftrace.FtraceSession.start(os.getpid())
    except ftrace.FtraceUnavailable as e:
        pytest.skip(f"tracefs not usable here: {e}")
    assert session.session is not None
    mount = session.session.mounted_here
    if mount is None:
        session.teardown()
        pytest.skip("tracefs is mounted for everyone here: nothing of ours to unmount")
    # Our open readers keep a plain umount from succeeding; someone cleaning up mounts by force detaches
    # it lazily: the instance's path is gone, the instance is not.
    subprocess.run(["umount", "-l", mount], check=True)
    try:
        session.stop()
    except ftrace.FtraceUnavailable:
        pass  # the record may or may not be readable then; what matters is what is left
    assert _leftovers(os.getpid()) == []
