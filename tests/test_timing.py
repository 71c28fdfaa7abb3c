"""``minivmm timing`` on the real host, its fit and verdict logic, its outputs, and strace's view."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli
from readiness import has_fd, takes, wait_until, wait_vms_closed

from kernel_model.sequences import SEQUENCES


def test_timing_bad_input_is_one_line(tmp_path):
    for args, fragment in ((["--sequence", "nope"], "neither a named sequence"),
                           (["--platform", "ppc"], "unknown platform"),
                           (["--plot", str(tmp_path)], "is a directory"),
                           (["--plot", str(tmp_path / "no" / "x.png")], "does not exist"),
                           (["--kvm", "/dev/null"], "not a KVM device"),
                           (["--kvm", str(tmp_path / "kvm")], "does not exist")):
        pinned = [] if "--platform" in args else ["--platform", "pvm", "--hz", "250"]
        proc = run_cli("timing", "--repeat", "1", *pinned, *args)
        # A device that is not there is "cannot run here" (4); a path that is not KVM is a usage mistake (2).
        assert proc.returncode == (4 if "does not exist" in fragment and "--kvm" in args else 2), (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and fragment in proc.stderr
    assert not (tmp_path / "no").exists()


def test_timing_without_kvm_is_cannot_run_here(tmp_path):
    proc = run_cli("timing", "--repeat", "1", "--platform", "pvm", "--hz", "250", "--kvm", str(tmp_path / "kvm"))
    assert proc.returncode == 4, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "does not exist" in proc.stderr


def test_unrunnable_sequence_is_refused_before_any_vm(tmp_path):
    f = tmp_path / "s.seq"
    f.write_text("create_vm\nvcpu id=0\nrun vcpu=0\n")
    proc = run_cli("timing", "-s", str(f), "-r", "1", "--platform", "pvm", "--hz", "250")
    assert proc.returncode == 2 and "needs a memslot covering" in proc.stderr


@pytest.mark.kvm
def test_timing_json_has_a_verdict_samples_and_predictions(tmp_path):
    png = tmp_path / "t.png"
    proc = run_cli("timing", "--sequence", "registrations-first", "--repeat", "12", "--jitter", "--json",
                   "--samples", "200", "--plot", str(png), timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert "variant" in data["verdict"] and data["verdict"]["text"]
    assert set(data["verdict"]["posterior"]) == {"sync", "call_srcu", "created_vcpus", "call_srcu_expedited"}
    assert abs(sum(data["verdict"]["posterior"].values()) - 1) < 1e-9
    assert set(data["host"]) >= {"cpu_pressure_pct", "load_average"}
    memslot = next(s for s in data["steps"] if s["op"] == "memslot")
    assert len(memslot["samples_ns"]) == 12
    assert {"sync", "call_srcu"} <= memslot["predicted"].keys()
    assert data["timer_overhead_ns"]["p50_ns"] < 2000
    assert data["host"]["hz"] and data["host"]["platform"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.kvm
def test_every_named_sequence_runs_on_the_host():
    from minivmm.timing.runner import measure
    for seq in SEQUENCES.values():
        reps, overhead = measure(seq, 2, jitter=False, hz=250)
        assert all(len(r.durations_ns) == len(seq.steps) and min(r.durations_ns) > 0 for r in reps)
        for r in reps:  # the timeline the differential harness replays: each start after the last step's end
            assert r.starts_ns[0] == r.gaps_ns[0] and r.origin_ns + r.starts_ns[-1] < r.steps_end_ns
            for i in range(1, len(seq.steps)):
                assert r.starts_ns[i] >= r.starts_ns[i - 1] + r.durations_ns[i - 1] + r.gaps_ns[i]
            for i, (start, end) in enumerate(zip(r.starts_ns, r.ends_ns, strict=True)):
                assert end >= start + r.durations_ns[i]  # the ioctl's own time is within the step's span
                assert i + 1 == len(seq.steps) or end <= r.starts_ns[i + 1] - r.gaps_ns[i + 1]


@pytest.mark.kvm
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_strace_agrees_with_minivmm_on_the_millisecond_stall(tmp_path):
    """An independent clock: strace -T around the same ioctls. Our interval contains strace's (our clock
    reads sit outside the ptrace stops at syscall entry and exit), so per call strace never sees more
    than we do, and typically (the median) a little less; a ptrace stop can occasionally wait for a
    scheduler tick on a busy machine, so single calls may differ by more."""
    log = tmp_path / "strace.log"
    proc = subprocess.run(["strace", "-f", "-T", "-e", "trace=ioctl", "-o", str(log), sys.executable, "-m",
                           "minivmm", "timing", "-s", "registrations-first", "-r", "6", "--json", "--samples", "50"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    ours = [ns / 1000 for ns in
            next(s for s in json.loads(proc.stdout)["steps"] if s["op"] == "memslot")["samples_ns"]]
    theirs = [float(m.group(1)) * 1e6 for m in
              re.finditer(r"KVM_SET_USER_MEMORY_REGION, \{slot=0,.*?<(\d+\.\d+)>", log.read_text())]
    assert len(theirs) == len(ours) == 6
    for a, b in zip(ours, theirs):
        assert b <= a + 50, (ours, theirs)
    import statistics
    assert statistics.median(a - b for a, b in zip(ours, theirs)) <= 300, (ours, theirs)


def _listing(*dirs):
    import os
    return {d: sorted(os.listdir(d)) for d in dirs}


@pytest.mark.parametrize("name,fragment", [
    ("", "give a file name"),
    ("out.txt", "must end in .png"),
    ("noext", "must end in .png"),
    ("/dev/full", "not a regular file"),
    ("/proc/out.png", "cannot be written"),
    ("dangling.png", "symbolic link"),
    ("link.png", "symbolic link"),
])
def test_plot_destination_is_refused_before_measuring_and_nothing_is_written(tmp_path, name, fragment):
    """Each bad --plot is one line, exit 2, before any measurement (the run would take minutes
    otherwise), and no file is created or overwritten: not the name, not a symlink's target."""
    import os
    target = tmp_path / "precious.png"
    target.write_bytes(b"keep me")
    os.symlink(tmp_path / "missing-target.png", tmp_path / "dangling.png")
    os.symlink(target, tmp_path / "link.png")
    before = _listing(tmp_path, "/dev")
    plot = name if name.startswith("/") or name == "" else str(tmp_path / name)
    proc = run_cli("timing", "--repeat", "50", "--platform", "pvm", "--hz", "250", "--plot", plot)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minivmm: error: --plot") and fragment in lines[0], lines
    assert proc.stdout == ""
    assert _listing(tmp_path, "/dev") == before
    assert target.read_bytes() == b"keep me"
    assert not os.path.exists("/dev/full.png") and not os.path.exists(str(tmp_path / "noext.png"))


def test_plot_is_written_atomically_and_only_where_named(tmp_path):
    from minivmm.files import Output
    out = tmp_path / "p.png"
    out.write_bytes(b"old")
    target = Output(str(out), "--plot", suffix=".png")
    with pytest.raises(RuntimeError):
        def fail(f):
            f.write(b"partial")
            raise RuntimeError("drawing failed")
        target.write_with(fail)
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]
    target.write_with(lambda f: f.write(b"new"))
    assert out.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


@pytest.mark.kvm
def test_ctrl_c_during_timing_reports_what_was_measured_marked_partial():
    import signal
    p = subprocess.Popen([sys.executable, "-m", "minivmm", "timing", "-s", "registrations-first", "-r", "100000",
                          "-n", "20"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: takes(p.pid, signal.SIGINT), "SIGINT taken", p)
    # Three VMs closed: at least one repetition is recorded, whether or not the host facts' probe made a
    # VM first and however the signal falls between a repetition's close and its being recorded.
    wait_vms_closed(p, 3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    m = re.search(r"warning: partial results: interrupted \(Ctrl-C\) after (\d+) of 100000 repetitions", out)
    assert m and int(m.group(1)) > 0, out[:500]
    assert f"minivmm timing: sequence registrations-first, {m.group(1)} repetitions" in out
    assert "verdict:" in out


@pytest.mark.kvm
@pytest.mark.parametrize("calibrate", [False, True])
def test_sigterm_during_timing_ends_with_143_and_writes_nothing(tmp_path, calibrate):
    import signal
    profile = tmp_path / "p.json"
    args = (["--calibrate", "--profile", str(profile)] if calibrate
            else ["-s", "registrations-first", "--plot", str(tmp_path / "plot.png")])
    p = subprocess.Popen([sys.executable, "-m", "minivmm", "timing", "-r", "100000", *args], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: takes(p.pid, signal.SIGTERM) and has_fd(p.pid, "kvm-vm"), "SIGTERM taken, a VM made", p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "Traceback" not in err and out == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.kvm
def test_the_progress_bar_is_drawn_on_stderr_when_it_is_a_terminal_and_nowhere_else():
    import os
    import pty
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "minivmm", "timing", "-s", "registrations-first", "-r", "25",
                               "-n", "20"], cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, text=True, timeout=120)
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    tty = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "timing registrations-first" in tty and "/25" in tty
    assert "[" not in proc.stdout.split("\n", 1)[0] and "\r" not in proc.stdout
    # and with stderr a pipe, nothing of it at all
    piped = run_cli("timing", "-s", "registrations-first", "-r", "3", "-n", "20")
    assert piped.stderr == ""
