"""scripts/differential.py as a user runs it: bad arguments end in one line and exit 2; ``--vmm`` compares
a traced program's set-up (kvm). No host timing is asserted."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "differential.py"


def script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--hz", "250", "--platform", "pvm", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, says", [
    (["--qemu", "--vmm", "true"], "--qemu is a --vmm"),
    (["--vmm", "no-such-program-here"], "no such program"),
    (["--vmm", "true 'unclosed"], "--vmm: No closing quotation"),
    (["--vmm", ""], "an empty command"),
    (["--vmm", "true", "--interleave"], "does not go with --vmm"),
])
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], says: str) -> None:
    proc = script(*args)
    assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_a_profile_that_cannot_be_used_is_one_line_and_exit_2(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, says in ((tmp_path / "missing.json", "does not exist"), (fifo, "is not a regular file (a FIFO)")):
        proc = script("--profile", str(path), "--cases", "1", "--repeat", "2")
        assert proc.returncode == 2 and says in proc.stderr.splitlines()[-1] and "Traceback" not in proc.stderr
        assert proc.stdout == ""
    assert fifo.is_fifo()  # left as it was


@pytest.mark.kvm
def test_a_traced_programs_set_up_is_compared_and_reported(trace_prog: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "d.json"
    proc = script("--vmm", f"{trace_prog} 3 0", "--repeat", "4", "--per-rep", "1", "--no-trace", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "the 6 steps every run's set-up shares (of up to 6)" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["vmm"].endswith("trace_prog 3 0") and doc["cases"] == 0 and doc["pairing"] == ["not asked to"]
    assert [s["label"].split(",")[0] for s in doc["all"]] == ["KVM_SET_USER_MEMORY_REGION"]
    assert doc["all"][0]["step"] == 5  # numbered as every report does: KVM_CREATE_VM is step 1


@pytest.mark.kvm
def test_a_program_that_makes_no_vm_is_one_line() -> None:
    proc = script("--vmm", "true", "--repeat", "2", "--no-trace")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == ["differential.py: --vmm: run 1: the trace has no successful KVM_CREATE_VM: "
                                        "there is no VM set-up to explain"]


@pytest.mark.parametrize("sig, code, line", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated"), (signal.SIGHUP, 129, "hung up")])
def test_a_signal_while_a_traced_program_runs_ends_in_one_line_and_its_code(sig: int, code: int, line: str) -> None:
    # The tracer takes the signal to end its program (as minivmm trace does); the script then stops too.
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--hz", "250", "--platform", "pvm", "--vmm", "sleep 30",
                             "--repeat", "3", "--no-trace"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
        assert time.monotonic() < deadline and proc.poll() is None, "the traced program never started"
        time.sleep(0.05)  # the tracee has started: the script is inside its tracer
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code and err.splitlines()[-1:] == [f"differential.py: {line}"], err
    assert "Traceback" not in err


def test_ctrl_c_while_the_script_imports_ends_in_one_line_and_130(tmp_path: pathlib.Path) -> None:
    # A kernel_model that Ctrl-C interrupts while it is imported (first on the path): the moment
    # between starting the script and its own handlers.
    fake = tmp_path / "kernel_model"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise KeyboardInterrupt\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cases", "1"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 130 and proc.stderr.splitlines() == ["differential.py: interrupted"], proc.stderr


@pytest.mark.kvm
@pytest.mark.parametrize("sig, times, code, line", [(signal.SIGTERM, 1, 143, "terminated"),
                                                    (signal.SIGINT, 2, 130, "interrupted")])
def test_a_signal_while_cases_run_on_the_host_ends_in_one_line_and_its_code(sig: int, times: int, code: int,
                                                                           line: str) -> None:
    # No tracer here: the script's own handler, through the measurement loop's interrupt. A second
    # Ctrl-C while the script ends does not cut its line or status short.
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--hz", "250", "--platform", "pvm", "--cases", "50",
                             "--repeat", "200", "--no-trace"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the first case's line: the script is well inside its loop
    assert first.startswith("case00:"), first
    for _ in range(times):
        proc.send_signal(sig)
        time.sleep(0.01)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and err.splitlines()[-1:] == [f"differential.py: {line}"], err
    assert "Traceback" not in err
