"""Signals at any moment: start-up with many vCPUs, mid-run, and a second signal during shutdown.

Each case is a real ``minivmm boot`` process on a guest that exits forever (``out %al,$0x80; jmp 1b``),
signalled at a random moment once it handles signals (SIGTERM shows as blocked in its main thread's
/proc/PID/status: a watcher thread takes it), so the signal lands during the build of up to 64 vCPUs,
their start or the run.
Whatever the moment, the process must exit with the first signal's documented code, with no
traceback and no crash.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

pytestmark = pytest.mark.kvm

#: out 0x80, al; jmp back to the out (real mode)
OUT_LOOP = bytes.fromhex("e680ebfc")
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
RUNS = 20


def _handles_sigterm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigBlk:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except FileNotFoundError:
        pass
    return False


def _boot(image: str, vcpus: int) -> subprocess.Popen[str]:
    # SIGINT at its default disposition, as from a terminal.
    return subprocess.Popen([sys.executable, "-m", "minivmm", "boot", image, "--vcpus", str(vcpus),
                             "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _signal_at_random(tmp_path, rng: random.Random, second: bool) -> None:
    image = tmp_path / "outloop.bin"
    image.write_bytes(OUT_LOOP)
    vcpus = rng.choice((1, 8, 32, 64))
    first = rng.choice(tuple(CODES))
    proc = _boot(str(image), vcpus)
    try:
        deadline = time.monotonic() + 30
        while not _handles_sigterm(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, "boot never installed its handlers"
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.5))
        proc.send_signal(first)
        if second:
            time.sleep(rng.uniform(0, 0.03))
            proc.send_signal(rng.choice(tuple(CODES)))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    case = f"vcpus={vcpus} first={signal.Signals(first).name} second={second}"
    assert proc.returncode == CODES[first], (case, proc.returncode, err[-2000:])
    assert "Traceback" not in err and "Error" not in err, (case, err[-2000:])
    assert "--- minivmm: " in out, case


@pytest.mark.slow
@pytest.mark.parametrize("run", range(RUNS))
def test_one_signal_at_a_random_moment(tmp_path, run):
    _signal_at_random(tmp_path, random.Random(1000 + run), second=False)


@pytest.mark.slow
@pytest.mark.parametrize("run", range(RUNS))
def test_a_second_signal_0_to_30_ms_after_the_first(tmp_path, run):
    _signal_at_random(tmp_path, random.Random(2000 + run), second=True)


def test_sigint_before_the_vcpus_start_still_reports_and_releases(tmp_path):
    """A stop requested while the machine is built: no vCPU thread starts, the run reports at once."""
    from minivmm.devices.console import Console
    from minivmm.vmm.lifecycle import StopRequest
    from minivmm.vmm.machine import Machine, MachineConfig
    from minivmm.vmm.report import RunOutcome
    stop = StopRequest()
    with Machine(MachineConfig(vcpus=4, timeout=60), OUT_LOOP, Console(), stop=stop) as m:
        stop.request(signal.SIGTERM)
        stop.request(signal.SIGINT)  # a second signal: already stopping, changes nothing
        t0 = time.monotonic()
        report = m.run()
    assert report.outcome is RunOutcome.TERMINATED and time.monotonic() - t0 < 5
    assert [v.state for v in report.vcpus] == ["created"] * 4


def test_stop_signals_record_the_first_and_put_everything_back():
    import os

    from minivmm.vmm.lifecycle import StopRequest, stop_signals
    from minivmm.vmm.report import RunOutcome
    handler_before = signal.getsignal(signal.SIGINT)
    mask_before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    with stop_signals(StopRequest()) as stop:
        assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set())
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while stop.signum is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)  # a second signal: already stopping
        time.sleep(0.05)
        assert stop.signum == signal.SIGTERM and stop.outcome is RunOutcome.TERMINATED
    assert signal.getsignal(signal.SIGINT) is handler_before
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == mask_before
