"""``minivmm trace`` as a user runs it: output, exit codes, bad input (one line each), --json,
--save-sequence (replayed by ``minivmm model``), and QEMU where it is installed."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from readiness import children, ignores, wait_until

from tests.test_trace import self_timings

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.kvm

def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "minivmm", "trace", *args]


def run_trace(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``minivmm trace ARGS`` in a subprocess and capture its output."""
    return subprocess.run(_argv(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def prog(trace_prog: str) -> str:
    """tests/trace_prog.c, built once (conftest's trace_prog)."""
    return trace_prog


def validate_trace(doc: dict) -> None:  # type: ignore[type-arg]
    """Check a --json document against minivmm/schemas/trace.schema.json (needs the jsonschema library)."""
    pytest.importorskip("jsonschema")
    from tests.jsonschemas import validate
    validate(doc, "trace")
    assert list(doc)[:2] == ["schema_version", "kind"]


def one_error_line(p: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("minivmm")]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def test_text_output_and_exit_status(prog: str) -> None:
    p = run_trace("--", prog, "3", "6")
    assert p.returncode == 6, p.stderr
    out = p.stdout
    assert out.startswith("done 3\n")  # the program's own output passes through
    assert re.search(r"\[pid \d+\] ioctl\(vm, KVM_IOEVENTFD, \{datamatch=0x1, addr=0xd0000050, len=4, fd=\d+, "
                     r"flags=KVM_IOEVENTFD_FLAG_DATAMATCH\}\) = 0 <\d+\.\d{6}>", out)
    assert re.search(r"ioctl\(vm, KVM_SET_USER_MEMORY_REGION, \{slot=0, flags=0, guest_phys_addr=0, "
                     r"memory_size=2097152, userspace_addr=0x[0-9a-f]+\}\) = 0 <", out)
    assert "ioctl(system, KVM_CREATE_VM, 0) = " in out
    assert "clock: " in out and "exited with 6 ---" in out
    assert "\nload: CPU pressure " in out  # the load the trace ran under, as timing states it
    assert "--- explanation" in out and "verdict:" in out and "whole set-up" in out


def test_json_document(prog: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "t.json"
    p = run_trace("--json", "-o", str(out), "--", prog, "2", "0")
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    validate_trace(doc)
    assert doc["schema_version"] == 3 and doc["outcome"] == "exited" and doc["exit_code"] == 0
    assert set(doc["host"]) >= {"cpu_pressure_pct", "load_average"}
    assert doc["tracee"]["exit_code"] == 0 and doc["clock"]["source"] in ("kernel", "ptrace")
    names = [i["request"] for i in doc["ioctls"]]
    assert names[:2] == ["KVM_GET_API_VERSION", "KVM_CREATE_VM"] and names.count("KVM_IOEVENTFD") == 2
    io = next(i for i in doc["ioctls"] if i["request"] == "KVM_IOEVENTFD")
    assert io["role"] == "vm" and io["arg"]["addr"] == 0xD0000050 and io["duration_us"] > 0
    ex = doc["explanation"]
    steps = ex["steps"]
    assert [s["op"] for s in steps] == ["create_vm", "ioeventfd", "ioeventfd", "memslot", "vcpu"]
    assert all(set(s["predicted_us"]) >= {"sync", "call_srcu"} for s in steps)
    assert "p50_us" in steps[0]["predicted_us"]["sync"] and "measured_us" in ex["setup"]
    assert ex["verdict"]["text"]
    for key in _all_keys(doc):  # unit-suffixed: no bare "duration" or "gap" fields
        assert key not in ("duration", "gap", "elapsed", "time")


def _all_keys(x: object) -> list[str]:
    if isinstance(x, dict):
        return [k for k in x] + [k2 for v in x.values() for k2 in _all_keys(v)]
    if isinstance(x, list):
        return [k for v in x for k in _all_keys(v)]
    return []


def test_saved_sequence_replays_under_model(prog: str, tmp_path: pathlib.Path) -> None:
    seq = tmp_path / "setup.seq"
    p = run_trace("--save-sequence", str(seq), "--", prog, "4", "0")
    assert p.returncode == 0, p.stderr
    text = seq.read_text()
    assert "ioeventfd addr=0xd0001050 len=4 datamatch=1" in text and "memslot slot=0" in text
    from kernel_model.sequences import load_sequence
    s = load_sequence(str(seq))
    assert [st.op for st in s.steps] == ["create_vm"] + ["ioeventfd"] * 4 + ["memslot", "vcpu"]
    m = subprocess.run([sys.executable, "-m", "minivmm", "model", "--sequence", str(seq)], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert m.returncode == 0, m.stderr
    assert "KVM_SET_USER_MEMORY_REGION" in m.stdout
    t = subprocess.run([sys.executable, "-m", "minivmm", "timing", "--sequence", str(seq), "--repeat", "2",
                        "--samples", "50"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert t.returncode == 0, t.stderr
    assert "verdict:" in t.stdout


def test_save_sequence_without_the_explanation(prog: str, tmp_path: pathlib.Path) -> None:
    seq = tmp_path / "s.seq"
    p = run_trace("--no-explain", "--save-sequence", str(seq), "--", prog, "1", "0")
    assert p.returncode == 0, p.stderr
    assert "--- explanation" not in p.stdout and "create_vm" in seq.read_text()


def test_poll_us_zero_traces_as_the_default_does_and_a_bad_value_is_one_line(prog: str) -> None:
    calls = []
    for poll in ("0", "50"):
        p = run_trace("--poll-us", poll, "--no-explain", "--", prog, "3", "6")
        assert p.returncode == 6, p.stderr
        calls.append(re.findall(r"ioctl\((\w+), (KVM_\w+)", p.stdout))
    assert calls[0] == calls[1] and ("vm", "KVM_IOEVENTFD") in calls[0]
    for bad in ("20000", "-1", "soon"):
        p = run_trace("--poll-us", bad, "--", prog)
        assert p.returncode == 2 and "--poll-us" in one_error_line(p)


def test_no_command() -> None:
    p = run_trace()
    assert p.returncode == 2 and "no COMMAND" in one_error_line(p)


def test_missing_and_non_executable_command(tmp_path: pathlib.Path) -> None:
    p = run_trace("--", str(tmp_path / "nothere"))
    assert p.returncode == 2 and "does not exist" in one_error_line(p)
    f = tmp_path / "plain"
    f.write_text("x")
    p = run_trace("--", str(f))
    assert p.returncode == 2 and "not executable" in one_error_line(p)
    p = run_trace("--", "no-such-command-minivmm")
    assert p.returncode == 2 and "not found in PATH" in one_error_line(p)


def test_command_without_kvm_ioctls() -> None:
    p = run_trace("--json", "--", "/bin/sh", "-c", "exit 3")
    assert p.returncode == 2
    assert "no KVM ioctls" in one_error_line(p) and "ended with exit status 3" in p.stderr
    doc = json.loads(p.stdout)
    validate_trace(doc)
    assert doc["outcome"] == "no_kvm_ioctls" and doc["exit_code"] == 2 and doc["tracee"]["exit_code"] == 3


def test_command_killed_by_a_signal(prog: str) -> None:
    p = run_trace("--", prog, "1", "0", "signal")
    assert p.returncode == 128 + signal.SIGTERM
    assert "killed by SIGTERM" in one_error_line(p)


def test_forks_and_execs_are_followed(prog: str) -> None:
    p = run_trace("--", prog, "1", "4", "fork")
    assert p.returncode == 4
    assert re.search(r"forked pid \d+; followed", p.stdout) and "executed" in p.stdout
    assert re.search(r"started 1 child process\(es\) and 1 exec\(s\); all were followed, and the KVM ioctls "
                     r"of pid \d+ are in the trace", p.stderr)
    assert "ioctl(vm, KVM_IOEVENTFD" in p.stdout


def test_unwritable_save_sequence_is_refused_before_the_run(prog: str, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"
    p = run_trace("--save-sequence", str(tmp_path / "no" / "dir.seq"), "--", "/bin/sh", "-c", f"touch {marker}")
    assert p.returncode == 2 and "does not exist" in one_error_line(p)
    assert not marker.exists()  # checked before the command ran
    link = tmp_path / "link.seq"
    link.symlink_to(tmp_path / "target")
    p = run_trace("--save-sequence", str(link), "--", prog)
    assert p.returncode == 2 and "symbolic link" in one_error_line(p)
    assert not (tmp_path / "target").exists()


def test_detach_needs_until_first_run(prog: str) -> None:
    p = run_trace("--detach", "--", prog)
    assert p.returncode == 2 and "--detach needs --until first-run" in one_error_line(p)


def test_timeout_ends_the_program(tmp_path: pathlib.Path) -> None:
    t0 = time.monotonic()
    p = run_trace("--timeout", "0.5", "--", "/bin/sleep", "30")
    assert p.returncode == 1 and time.monotonic() - t0 < 20
    assert "--timeout" in p.stderr


def test_until_first_run_on_minivmm_boot() -> None:
    p = run_trace("--until", "first-run", "--timeout", "60", "--", sys.executable, "-m", "minivmm", "boot",
                  str(ROOT / "guest" / "hello.bin"))
    assert p.returncode == 0, p.stderr
    assert re.search(r"ioctl\(vcpu0, KVM_RUN, 0\) = 0 <\d+\.\d+> \(first KVM_RUN of vcpu0", p.stdout)
    assert "every vCPU entered KVM_RUN; ended with SIGTERM" in p.stdout
    assert "KVM_RUN, vcpu 0 (first entry)" in p.stdout


def test_detach_leaves_the_vmm_running(tmp_path: pathlib.Path) -> None:
    """--detach: minivmm trace returns after the report while the VMM keeps running (and its KVM ioctls
    keep working); the VMM is then ended by us here."""
    report = tmp_path / "report.txt"
    # The VMM inherits our stdout and stderr, so they go to a file: a pipe would stay open while it runs.
    with open(tmp_path / "vmm.out", "w") as vmm_out:
        p = subprocess.run(_argv("--until", "first-run", "--detach", "--no-explain", "-o", str(report), "--",
                                 sys.executable, "-m", "minivmm", "boot", str(ROOT / "guest" / "pioloop.bin"),
                                 "--timeout", "30"),
                           stdout=vmm_out, stderr=vmm_out, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0, (tmp_path / "vmm.out").read_text()
    out = report.read_text()
    m = re.search(r"detached, \S+ \(pid (\d+)\) keeps running", out)
    assert m, out
    pid = int(m.group(1))
    try:
        for _ in range(30):  # over 0.3 s: not left stopped, and not stopped again a moment later
            with open(f"/proc/{pid}/status") as f:
                state = next(line for line in f if line.startswith("State:"))
            assert "T (" not in state
            time.sleep(0.01)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_strace_and_trace_agree_loosely_on_the_stall(prog: str) -> None:
    """Both tools time the same kind of run; the stalled memslot is >= 1 jiffy-scale in both or in neither.
    (Loose by design: two runs, two tick phases.) On a busy host a run preempted for a few ms between
    its registrations and its memslot finds the grace period over and does not stall: there only
    strace's interval is checked against the program's own."""
    from conftest import quiet_host

    from minivmm.timing.pressure import LoadWindow
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    window = LoadWindow.start()
    p = run_trace("--json", "--no-explain", "--", prog, "6", "0")
    doc = json.loads(p.stdout.split("done 6\n", 1)[1])
    ours = next(i for i in doc["ioctls"] if i["request"] == "KVM_SET_USER_MEMORY_REGION")["duration_us"]
    s = subprocess.run(["strace", "-f", "-T", "-e", "trace=ioctl", prog, "6", "0"], capture_output=True, text=True)
    m = re.search(r"KVM_SET_USER_MEMORY_REGION.*<(\d+\.\d+)>", s.stderr)
    assert m, s.stderr[-500:]
    theirs = float(m.group(1)) * 1e6
    own = dict(self_timings(s.stderr))["KVM_SET_USER_MEMORY_REGION"] / 1000
    assert theirs <= own * 1.01 + 50  # strace's interval lies inside the program's own
    if quiet_host(window.end()):
        assert (ours > 1000) == (theirs > 1000) or abs(ours - theirs) < 5000


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
def test_qemu_until_first_run(tmp_path: pathlib.Path) -> None:
    """QEMU's set-up: every KVM ioctl named (none left as a bare number), decoded set-up arguments, every
    vCPU created and run, QEMU ended by SIGTERM, and the saved sequence loads."""
    seq = tmp_path / "qemu.seq"
    out = tmp_path / "qemu.json"
    p = run_trace("--until", "first-run", "--timeout", "60", "--json", "-o", str(out), "--save-sequence", str(seq),
                  "--", QEMU or "", "-enable-kvm", "-machine", "q35", "-m", "128", "-smp", "2", "-nodefaults",
                  "-nographic", timeout=180)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    validate_trace(doc)
    assert doc["outcome"] == "first-run" and doc["tracee"]["ended_by_tracer"]
    ioctls = doc["ioctls"]
    assert all(not i["request"].startswith("KVM_IOCTL_0x") for i in ioctls)
    assert {i["arg"]["id"] for i in ioctls if i["request"] == "KVM_CREATE_VCPU"} == {0, 1}
    assert {i["role"] for i in ioctls if i["request"] == "KVM_RUN"} >= {"vcpu0", "vcpu1"}
    mem = [i for i in ioctls if i["request"] == "KVM_SET_USER_MEMORY_REGION"]
    assert any(m["arg"]["memory_size"] == 128 << 20 or m["arg"]["guest_phys_addr"] == 0x100000 for m in mem)
    assert any(m["arg"]["readonly"] for m in mem)  # the BIOS
    assert any(i["request"] == "KVM_IOEVENTFD" and i["arg"]["pio"] for i in ioctls)
    stalled = [s for s in doc["explanation"]["steps"] if s["stalled"]]
    assert all(s["measured_us"] >= 1000 for s in stalled)
    from kernel_model.sequences import load_sequence
    assert load_sequence(str(seq)).steps[0].op == "create_vm"


def _strace_qemu(tmp_path: pathlib.Path, qemu_args: list[str]) -> list[tuple[str, float]]:
    """QEMU under ``strace -f -T -e trace=ioctl`` for two seconds, ended by SIGTERM to QEMU (found as
    strace's own child, by pid); returns (request, seconds) per completed ioctl, in order."""
    log = tmp_path / "strace.log"
    s = subprocess.Popen(["strace", "-f", "-T", "-e", "trace=ioctl", "-o", str(log), *qemu_args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # QEMU's set-up is over once a vCPU has run: its KVM_RUN is in strace's log.
        wait_until(lambda: log.exists() and "KVM_RUN" in log.read_text(errors="replace"), "QEMU ran a vCPU", s)
        for child in children(s.pid):
            os.kill(child, signal.SIGTERM)
        s.wait(timeout=30)
    finally:
        if s.poll() is None:
            s.kill()
            s.wait()
    out = []
    for line in log.read_text().splitlines():
        m = re.search(r"(KVM_\w+).*<(\d+\.\d+)>$", line)
        if m:
            out.append((m.group(1), float(m.group(2))))
    return out


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None or shutil.which("strace") is None, reason="needs qemu-system-x86_64 and strace")
def test_qemu_stalls_agree_with_strace(tmp_path: pathlib.Path) -> None:
    """The calls that stall in QEMU's set-up stall under both tools, by the same order of size (loosely:
    separate runs, separate tick phases)."""
    qemu = [QEMU or "", "-enable-kvm", "-machine", "q35", "-m", "128", "-smp", "2", "-nodefaults", "-nographic"]
    out = tmp_path / "t.json"
    p = run_trace("--until", "first-run", "--timeout", "60", "--json", "--no-explain", "-o", str(out), "--", *qemu,
                  timeout=180)
    assert p.returncode == 0, p.stderr
    ours = [(i["request"], i["duration_us"] / 1e6) for i in json.loads(out.read_text())["ioctls"]
            if i["duration_us"] is not None and i["request"] != "KVM_RUN"]
    def stalls(calls: list[tuple[str, float]]) -> dict[tuple[str, int], float]:
        """(request, its n-th occurrence) -> seconds, for the calls of at least 1 ms: QEMU issues the same
        calls in the same order every run, so the n-th KVM_IOEVENTFD is the same call in both runs."""
        seen: dict[str, int] = {}
        out = {}
        for name, secs in calls:
            seen[name] = seen.get(name, 0) + 1
            if secs >= 0.001:
                out[(name, seen[name])] = secs
        return out

    a = stalls(ours)
    assert a, ours
    # A stall's length (and, near a tick, whether a call stalls at all) depends on the tick phase, so
    # strace gets up to three runs to show a stall at one of the same calls.
    for _ in range(3):
        b = stalls([x for x in _strace_qemu(tmp_path, qemu) if x[0] != "KVM_RUN"])
        common = set(a) & set(b)
        if common:
            break
    assert common, (a, b)
    # Loosely: each stall's length is set by its own tick phase (one to two jiffies, more on a busy
    # host), so one common stall within a factor of four is asked for, not all of them.
    assert any(1 / 4 <= a[key] / b[key] <= 4 for key in common), {k: (a[k], b[k]) for k in common}


def test_ctrl_c_ends_the_program_and_exits_130() -> None:
    """SIGINT to minivmm trace (as a terminal's Ctrl-C would also send to the program, which here
    ignores it): after a grace period the program is ended, nothing is left behind, exit 130."""
    p = subprocess.Popen(_argv("--no-explain", "--", "/bin/sh", "-c", "trap '' INT; sleep 30"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    # The traced shell has set its trap (it ignores SIGINT) and started `sleep 30`.
    wait_until(lambda: any(ignores(c, signal.SIGINT) and children(c) for c in children(p.pid)),
               "the traced shell ignores SIGINT and runs sleep", p)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert time.monotonic() - t0 < 15  # ended after the grace period, not when `sleep 30` finished
    assert "interrupted (Ctrl-C)" in out and "Traceback" not in err


@pytest.mark.slow
def test_ctrl_c_during_a_tight_loop_of_kvm_ioctls(prog: str, tmp_path: pathlib.Path) -> None:
    """SIGINT lands while the tracer's C stop path is busiest (a KVM ioctl after another, each stop
    resumed in C and the next one polled for): the same ending as when the program idles, and the
    report keeps every call made until then."""
    out = tmp_path / "t.txt"
    p = subprocess.Popen(_argv("--no-explain", "-o", str(out), "--", prog, "checks", "100000000"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    wait_until(lambda: bool(children(p.pid)), "the program started", p)
    time.sleep(0.5)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert time.monotonic() - t0 < 15 and "Traceback" not in err
    text = out.read_text()
    assert "interrupted (Ctrl-C)" in text
    assert text.count("ioctl(system, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) = 1 <") > 100


def test_ptrace_denied_messages_say_how_to_allow_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    import io

    from minivmm.trace import tracer
    real_open = builtins.open

    def fake(scope: str | None):  # type: ignore[no-untyped-def]
        def opener(path, *a, **k):  # type: ignore[no-untyped-def]
            if str(path) == "/proc/sys/kernel/yama/ptrace_scope":
                if scope is None:
                    raise FileNotFoundError(path)
                return io.StringIO(scope + "\n")
            return real_open(path, *a, **k)
        return opener

    monkeypatch.setattr(builtins, "open", fake("1"))
    assert "ptrace_scope=1" in tracer._denied_hint() and "sysctl kernel.yama.ptrace_scope=0" in tracer._denied_hint()
    monkeypatch.setattr(builtins, "open", fake("3"))
    assert "reboot" in tracer._denied_hint()
    monkeypatch.setattr(builtins, "open", fake(None))
    assert "CAP_SYS_PTRACE" in tracer._denied_hint()


def test_openmetrics_output_parses(prog: str, tmp_path: pathlib.Path) -> None:
    """--format openmetrics: what node_exporter's textfile collector reads, checked with the official parser."""
    parser = pytest.importorskip("prometheus_client.openmetrics.parser")
    out = tmp_path / "trace.prom"
    p = run_trace("--format", "openmetrics", "-o", str(out), "--", prog, "2", "0")
    assert p.returncode == 0, p.stderr
    families = {f.name: f for f in parser.text_string_to_metric_families(out.read_text())}
    assert "minivmm_trace_step_duration_seconds" in families and "minivmm_trace_setup_duration_seconds" in families
    ops = [s.labels["op"] for s in families["minivmm_trace_step_duration_seconds"].samples]
    assert "memslot" in ops and "create_vm" not in ops  # the stall is shown, a step all variants agree on is summed
    p = run_trace("--json", "--format", "openmetrics", "--", prog)
    assert p.returncode == 2 and "contradict" in one_error_line(p)


def test_every_vm_of_the_program_is_explained_and_the_one_that_ran_is_saved(prog: str, tmp_path: pathlib.Path) -> None:
    """A probe VM, a VM whose vCPU runs, a second VM: one explanation each, the report says whose vCPUs ran,
    --save-sequence saves that VM (with the host it was recorded on), and the VM and vCPU fds' close()
    and the exit_group are in the trace with their durations."""
    out, seq = tmp_path / "t.json", tmp_path / "setup.seq"
    p = run_trace("--json", "-o", str(out), "--save-sequence", str(seq), "--", prog, "vms")
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    validate_trace(doc)
    vms = doc["vms"]
    assert [(v["vm"], v["vcpus"], v["vcpus_ran"]) for v in vms] == [
        ("vm", [], []), ("vm1", ["vm1.vcpu0"], ["vm1.vcpu0"]), ("vm2", [], [])]
    assert all(v["explanation"] and v["explanation"]["steps"][0]["op"] == "create_vm" for v in vms)
    assert [v["leads"] for v in vms] == [False, True, False]
    assert doc["explanation"] == vms[1]["explanation"]
    assert [s["op"] for s in vms[1]["explanation"]["steps"]][-1] == "run"
    assert [s["op"] for s in vms[2]["explanation"]["steps"]] == ["create_vm", "memslot"]
    text = seq.read_text()
    assert "vm1 (pid" in text and "run vcpu=0" in text and re.search(r"^host hz=\d+ platform=\w", text, re.M)
    assert "--save-sequence: wrote" in p.stderr and "not saved (their vCPUs did not run): vm (pid" in p.stderr
    if doc["teardown"] is None:
        pytest.skip("close()/exit_group are recorded with the kernel clock only")
    closes = {c["role"]: c for c in doc["teardown"] if c["kind"] == "close"}
    assert set(closes) == {"vm", "vm1", "vm2", "vm1.vcpu0"}
    assert all(c["ret"] == 0 and c["duration_us"] is not None and c["duration_us"] >= 0 for c in closes.values())
    (group,) = [c for c in doc["teardown"] if c["kind"] == "exit_group"]
    assert group["ret"] == 0 and group["duration_us"] is not None
    t = run_trace("--no-explain", "--", prog, "vms")
    assert re.search(r"\] close\(vm1\) = 0 <\d+\.\d{6}>", t.stdout)
    assert re.search(r"VM vm1 \(pid \d+\): KVM_CREATE_VM \(ioctl #\d+\), \d+ ioctls, 1 vCPU \(ran: vm1.vcpu0\)",
                     t.stdout)


def test_with_no_vcpu_run_each_vm_is_saved_under_a_numbered_name(prog: str, tmp_path: pathlib.Path) -> None:
    seq = tmp_path / "setup.seq"
    p = run_trace("--no-explain", "--save-sequence", str(seq), "--", prog, "vms-norun")
    assert p.returncode == 0, p.stderr
    assert not seq.exists()
    from kernel_model.sequences import load_sequence
    saved = [load_sequence(str(tmp_path / f"setup.{k}.seq")) for k in (1, 2, 3)]
    assert [s.op for s in saved[0].steps] == ["create_vm", "ioctl"]  # the probe's KVM_CHECK_EXTENSION
    assert [[s.op for s in q.steps][-1] for q in saved[1:]] == ["vcpu", "memslot"]
    assert p.stderr.count("setup.") == 3 and "not saved" not in p.stderr


def test_save_sequence_never_silently_writes_nothing(tmp_path: pathlib.Path) -> None:
    seq = tmp_path / "none.seq"
    p = run_trace("--save-sequence", str(seq), "--", "/bin/sh", "-c", "exit 0")
    assert p.returncode == 2 and not seq.exists()
    assert "--save-sequence: nothing written" in p.stderr


def test_the_saved_header_cannot_be_broken_by_an_argument(prog: str, tmp_path: pathlib.Path) -> None:
    """An argument with a newline (and a backslash) stays on the header's comment line: the file loads
    and replays at the traced host's HZ and platform unless told otherwise."""
    seq = tmp_path / "s.seq"
    p = run_trace("--no-explain", "--save-sequence", str(seq), "--", prog, "1", "0", "plain\ncreate_vm\\x")
    assert p.returncode == 0, p.stderr
    text = seq.read_text()
    assert text.splitlines()[0].endswith(" 'plain\\ncreate_vm\\\\x'")
    host = re.search(r"^host hz=(\d+) platform=(\S+)$", text, re.M)
    assert host, text
    from kernel_model.sequences import load_sequence
    assert [s.op for s in load_sequence(str(seq)).steps] == ["create_vm", "ioeventfd", "memslot", "vcpu"]
    m = subprocess.run([sys.executable, "-m", "minivmm", "model", "--sequence", str(seq), "-n", "20"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert m.returncode == 0 and f"at HZ={host.group(1)} on {host.group(2)}" in m.stdout, m.stderr
    m = subprocess.run([sys.executable, "-m", "minivmm", "model", "--sequence", str(seq), "-n", "20", "--hz", "1000",
                        "--platform", "svm"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert m.returncode == 0 and "at HZ=1000 on svm" in m.stdout, m.stderr


def _wait_for_line(stream: object, text: str, timeout: float = 60) -> None:
    """Read ``stream`` (a pipe) until a line containing ``text`` comes (or fail after ``timeout`` s)."""
    import select
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], deadline - time.monotonic())
        if not ready:
            break
        line = stream.readline()  # type: ignore[attr-defined]
        if not line:
            break
        if text in line:
            return
    raise AssertionError(f"no line with {text!r} within {timeout} s")


@pytest.mark.slow
def test_a_program_that_ignores_sigterm_ends_within_the_grace() -> None:
    """minivmm trace told to stop (SIGTERM) passes SIGTERM on; a program that ignores it is killed once
    the stated grace (5 s) is over, and minivmm trace says so and exits 143."""
    from minivmm.trace.tracer import TERM_GRACE_NS
    p = subprocess.Popen(_argv("--no-explain", "--", "/bin/sh", "-c", "trap '' TERM; echo ready; sleep 60"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        _wait_for_line(p.stdout, "ready")
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=TERM_GRACE_NS / 1e9 + 30)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 143, err
    assert TERM_GRACE_NS / 1e9 - 0.5 <= took < TERM_GRACE_NS / 1e9 + 20
    assert "did not end within 5 s of SIGTERM: it was killed (SIGKILL)" in err and "Traceback" not in err
    assert "minivmm trace was told to stop" in out and "killed by SIGKILL" in out


def _tracer_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("TracerPid:"))


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return True


def test_the_detached_helper_ends_on_sigterm(tmp_path: pathlib.Path) -> None:
    """--detach leaves a background minivmm serving the VMM's KVM ioctls; SIGTERM to it ends the VMM
    (SIGTERM, which minivmm boot obeys) and then the helper itself."""
    report = tmp_path / "report.txt"
    with open(tmp_path / "vmm.out", "w") as vmm_out:
        p = subprocess.run(_argv("--until", "first-run", "--detach", "--no-explain", "-o", str(report), "--",
                                 sys.executable, "-m", "minivmm", "boot", str(ROOT / "guest" / "pioloop.bin"),
                                 "--timeout", "60"),
                           stdout=vmm_out, stderr=vmm_out, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0, (tmp_path / "vmm.out").read_text()
    m = re.search(r"detached, \S+ \(pid (\d+)\) keeps running", report.read_text())
    assert m
    vmm = int(m.group(1))
    helper = _tracer_of(vmm)
    assert helper > 0
    try:
        os.kill(helper, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (_gone(vmm) and _gone(helper)):
            time.sleep(0.05)
        assert _gone(vmm) and _gone(helper)
    finally:
        for pid in (vmm, helper):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_an_already_traced_child_is_told_the_true_reason() -> None:
    """Under strace -f, the child minivmm trace starts is strace's tracee before it is ours: the error
    names the tracer holding it, not containers or CAP_SYS_PTRACE."""
    p = subprocess.run(["strace", "-f", "-o", os.devnull, *_argv("--", "/bin/true")], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert p.returncode == 2
    line = one_error_line(p)
    assert re.search(r"already being traced by pid \d+ \(strace\)", line) and "CAP_SYS_PTRACE" not in line


def test_p_attaches_to_a_running_vmm_and_lets_it_go(prog: str, tmp_path: pathlib.Path) -> None:
    """-p PID: the ioctls a running VMM makes after boot (ioeventfds a guest driver's virtqueue brings)
    are traced, decoded and named by role from /proc; Ctrl-C lets the VMM go, still running, which then
    ends as it would have (exit 0)."""
    vmm = subprocess.Popen([prog, "attach"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    assert vmm.stdin is not None and vmm.stdout is not None
    out = tmp_path / "t.json"
    tracer = None
    try:
        _wait_for_line(vmm.stdout, "ready")
        tracer = subprocess.Popen(_argv("-p", str(vmm.pid), "--json", "-o", str(out)), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=ROOT)
        _wait_for_line(tracer.stderr, "attached to pid")
        assert _tracer_of(vmm.pid) == tracer.pid
        vmm.stdin.write("x")
        vmm.stdin.flush()
        _wait_for_line(vmm.stdout, "registered")
        tracer.send_signal(signal.SIGINT)
        _, err = tracer.communicate(timeout=60)
        assert tracer.returncode == 130, err
        assert "let go of pid" in err and "Traceback" not in err
        assert vmm.poll() is None and _tracer_of(vmm.pid) == 0  # running, and no longer traced
    finally:
        vmm.stdin.close()
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
            tracer.communicate()
    assert vmm.wait(timeout=30) == 0
    doc = json.loads(out.read_text())
    validate_trace(doc)
    io = [(i["role"], i["arg"]["addr"], i["arg"]["pio"], i["arg"]["deassign"], i["ret"]) for i in doc["ioctls"]
          if i["request"] == "KVM_IOEVENTFD"]
    assert io == [("vm", 0x6008, True, False, 0), ("vm", 0xFE003000, False, False, 0), ("vm", 0x6008, True, True, 0)]
    assert all(i["duration_us"] is not None for i in doc["ioctls"])
    assert doc["tracee"]["pid"] == vmm.pid and doc["outcome"] == "interrupted"


def test_p_refuses_what_cannot_be_attached(prog: str) -> None:
    p = run_trace("-p", "999999999")
    assert p.returncode == 2 and "-p" in one_error_line(p)
    p = run_trace("-p", str(os.getpid()), "--", prog)
    assert p.returncode == 2 and "give no COMMAND" in one_error_line(p)
    p = run_trace("-p", str(os.getpid()), "--until", "first-run")
    assert p.returncode == 2 and "already running" in one_error_line(p)
    p = run_trace("--platform", "nope", "--", prog)
    assert p.returncode == 2 and "unknown platform" in one_error_line(p)


def _stalls_checked_against_the_kernel(doc: dict) -> list[dict]:  # type: ignore[type-arg]
    """The stalled steps of the leading explanation, each with the kernel's record of its grace period;
    skipped where the SRCU machinery's events could not be recorded, or nothing stalled."""
    ex = doc["explanation"]
    stalled = [s for s in ex["steps"] if s["stalled"]]
    if not stalled:
        pytest.skip("nothing stalled in this run (this kernel may not transfer grace periods)")
    if any(s["kernel"] is None for s in stalled):
        pytest.skip("the SRCU machinery's events could not be recorded here")
    return stalled


def test_the_model_s_attribution_is_checked_against_the_kernel(prog: str, tmp_path: pathlib.Path) -> None:
    """The program's memslot waits for the grace period its first ioeventfd's call_srcu() started: the
    kernel's own timer (armed during that ioctl, fired during the memslot, process_srcu after it) is
    shown beside the model's attribution, and they agree."""
    out = tmp_path / "t.json"
    p = run_trace("--json", "-o", str(out), "--", prog, "6", "0")
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    validate_trace(doc)
    first_registration = next(i["index"] for i in doc["ioctls"] if i["request"] == "KVM_IOEVENTFD")
    for step in _stalls_checked_against_the_kernel(doc):
        k = step["kernel"]
        assert k["timer_armed_by_ioctl"] == first_registration and k["timer_armed_us"] < 0
        assert 0 <= k["timer_fired_us"] <= step["measured_us"] and k["process_srcu_us"] >= k["timer_fired_us"]
        assert k["agrees"] and k["model_started_by_ioctl"] == first_registration
        assert k["timer_armed_by_step"] == k["model_started_by_step"] == doc["ioctls"][first_registration]["step"]
    t = run_trace("--", prog, "6", "0")
    if "stalls (measured >= 1 ms): none" not in t.stdout:  # another run: another tick phase
        assert re.search(r"kernel: SRCU grace-period timer armed during step #\d+ KVM_IOEVENTFD, [^(]+ \(ioctl #\d+\) "
                         r"[\d.]+ ms before this call fired at \+[\d.]+ ms, process_srcu ran at \+[\d.]+ ms; model: "
                         r"grace period started by step #\d+ \(ioctl #\d+\), wait ends at \+[\d.]+ ms -> agree",
                         t.stdout), t.stdout
        assert "model (call_srcu, its own figures): waited" in t.stdout and "is the model's figure" in t.stdout


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
def test_qemu_stalls_agree_with_the_kernel_s_grace_periods(tmp_path: pathlib.Path) -> None:
    """QEMU q35 -smp 2: on every stall the model puts down to a grace period an earlier ioctl started,
    the kernel saw that ioctl arm the SRCU timer that fired during the stall. (A stall the model does
    not predict may still be marked as a disagreement: a grace-period timer that fired late, a tail the
    model without a host profile does not draw.)"""
    out = tmp_path / "q.json"
    p = run_trace("--until", "first-run", "--timeout", "60", "--json", "-o", str(out), "--", QEMU or "",
                  "-enable-kvm", "-machine", "q35", "-m", "128", "-smp", "2", "-nodefaults", "-nographic", timeout=180)
    assert p.returncode == 0, p.stderr
    attributed = [s for s in _stalls_checked_against_the_kernel(json.loads(out.read_text()))
                  if s["kernel"]["model_started_by_ioctl"] is not None]
    assert attributed  # QEMU's set-up has grace-period stalls the model attributes (two on q35)
    for step in attributed:
        assert step["kernel"]["agrees"], step


@pytest.mark.slow
def test_a_long_trace_is_kept_compactly(prog: str, tmp_path: pathlib.Path) -> None:
    """300,000 KVM ioctls under --until exit: every one is in the report, and minivmm trace stays under
    200 MB (its peak resident size, measured by a parent of its own)."""
    out = tmp_path / "long.txt"
    code = ("import resource, subprocess, sys; "
            "p = subprocess.run(sys.argv[1:]); "
            "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    p = subprocess.run([sys.executable, "-c", code, *_argv("--no-explain", "-o", str(out), "--", prog, "checks",
                                                            "300000")], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    rc, maxrss_kb = map(int, p.stdout.split())
    assert rc == 0, p.stderr
    assert maxrss_kb < 200 * 1024
    with open(out) as f:
        assert sum(1 for line in f if "ioctl(system, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) = 1 <" in line) == 300000


def test_past_the_row_limit_ioctls_are_counted_and_the_report_says_so(prog: str, tmp_path: pathlib.Path) -> None:
    from minivmm.trace import report
    from minivmm.trace.tracer import Tracer
    t = Tracer(prog, [prog, "checks", "25"], limit=10)
    r = t.run()
    assert len(r.events) == 10 and r.events.dropped == {"KVM_CHECK_EXTENSION": 15}  # type: ignore[union-attr]
    import io
    text = io.StringIO()
    report.render_text(r, [], "", text)
    assert "(+15 further KVM ioctls not kept: the trace keeps the first 10; KVM_CHECK_EXTENSION x15)" in text.getvalue()
