"""The ftrace cross-check: the analysis on synthetic trace lines, and a real run where tracefs works."""

from __future__ import annotations

import pytest

from minivmm.cli.errors import outcome_exit_code
from minivmm.shadow.ftrace import analyse

L = "  vcpu0-{pid}  [001] ..... 12.000: {event}: {body}\n"


def line(pid: int, event: str, body: str) -> str:
    return L.format(pid=pid, event=event, body=body)


DB = 0xD0001000


def test_in_kernel_writes_exits_and_counts_agree():
    lines = [
        line(7, "kvm_mmio", f"mmio write len 4 gpa {DB:#x} val 0x1"),       # in kernel: next access follows
        line(7, "kvm_mmio", f"mmio write len 4 gpa {DB:#x} val 0x2"),       # in kernel: a read follows
        line(7, "kvm_mmio", f"mmio unsatisfied-read len 4 gpa {DB:#x} val 0x0"),
        line(7, "kvm_userspace_exit", "reason KVM_EXIT_MMIO (6)"),
        line(7, "kvm_mmio", "mmio write len 4 gpa 0xd0002000 val 0x5"),    # exits
        line(7, "kvm_userspace_exit", "reason KVM_EXIT_MMIO (6)"),
        line(7, "kvm_pio", "pio_write at 0xe9 size 1 count 1 val 0x41 "),
        line(7, "kvm_userspace_exit", "reason KVM_EXIT_IO (2)"),
    ]
    r = analyse(lines, 0, {"io": 1, "mmio": 2}, {DB: 2}, {DB})
    assert r.mismatches == [] and r.in_kernel_writes == {DB: 2}
    assert r.kernel_userspace_exits == {"KVM_EXIT_MMIO": 2, "KVM_EXIT_IO": 1}


def test_each_kind_of_disagreement_is_reported():
    lines = [line(7, "kvm_mmio", f"mmio write len 4 gpa {DB:#x} val 0x1"),
             line(7, "kvm_userspace_exit", "reason KVM_EXIT_HLT (5)")]
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

    from minivmm.shadow import ftrace
    try:
        ftrace.FtraceSession.start(os.getpid()).teardown()
    except ftrace.FtraceUnavailable as e:
        pytest.skip(f"tracefs not usable here: {e}")
    real_write = ftrace._write

    def interrupted(path: str, value: str) -> None:
        if path.endswith("set_event_pid"):
            raise KeyboardInterrupt  # as a Ctrl-C in the middle of arming the instance
        real_write(path, value)
    monkeypatch.setattr(ftrace, "_write", interrupted)
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
    from test_lifecycle import OUT_LOOP, _handles_sigterm
    image = tmp_path / "outloop.bin"
    image.write_bytes(OUT_LOOP)
    proc = subprocess.Popen([sys.executable, "-m", "minivmm", "boot", str(image), "--vcpus", "32", "--ftrace",
                             "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while not _handles_sigterm(proc.pid):
            assert proc.poll() is None
            time.sleep(0.005)
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


def test_an_instance_removed_under_the_run_is_reported_not_raised(tmp_path):
    from minivmm.shadow import ftrace
    gone = ftrace.FtraceSession(str(tmp_path), str(tmp_path / "instances" / "minivmm-1-000000"))
    with pytest.raises(ftrace.FtraceUnavailable, match="could not be read"):
        gone.stop()


def test_an_instance_whose_mount_was_unmounted_during_the_run_is_still_removed():
    import os
    import subprocess

    from minivmm.shadow import ftrace
    try:
        session = ftrace.FtraceSession.start(os.getpid())
    except ftrace.FtraceUnavailable as e:
        pytest.skip(f"tracefs not usable here: {e}")
    if session.mounted_here is None:
        session.teardown()
        pytest.skip("tracefs is mounted for everyone here: nothing of ours to unmount")
    subprocess.run(["umount", session.mounted_here], check=True)  # as someone cleaning up mounts would
    with pytest.raises(ftrace.FtraceUnavailable):
        session.stop()
    assert _leftovers(os.getpid()) == []
