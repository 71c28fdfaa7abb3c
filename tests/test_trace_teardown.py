"""What ``minivmm trace`` shows of a VM's teardown: the close() (or the exit) that destroyed it, timed by
the kernel's syscall events, and what the model says it waited for. On a small C program
(tests/teardown_probe.c) and on QEMU (skipped where it is not installed). No host figure is asserted:
only relations (the kernel's interval lies inside the program's own) and which call was the teardown."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import pytest
from conftest import run_cli
from jsonschemas import validate

pytestmark = [pytest.mark.kvm, pytest.mark.slow]
SRC = pathlib.Path(__file__).with_name("teardown_probe.c")


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The probe program, built here."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the probe program")
    out = tmp_path_factory.mktemp("teardown") / "teardown_probe"
    proc = subprocess.run(["gcc", "-O2", "-o", str(out), str(SRC)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return str(out)


def _trace_with_stderr(*command: str, until: tuple[str, ...] = (), code: int = 0) -> tuple[dict, str]:
    """``minivmm trace --json`` of ``command``, which exits with ``code`` (trace passes it on): the
    document and the program's stderr. Skips where closes are not recorded."""
    proc = run_cli("trace", "--json", *until, "--", *command, timeout=120)
    assert proc.returncode == code, proc.stderr
    doc = json.loads(proc.stdout)
    if doc["teardown"] is None:
        pytest.skip("closes are not recorded here (no kernel clock, or no syscalls:sys_enter_close)")
    return doc, proc.stderr


def _trace(*command: str, until: tuple[str, ...] = (), code: int = 0) -> dict:
    return _trace_with_stderr(*command, until=until, code=code)[0]


def _self_close_ns(stderr: str) -> int:
    return next(int(p[2]) for line in stderr.splitlines() if (p := line.split())[:2] == ["self", "close"])


def test_a_probe_vm_shows_its_close_and_duration(probe):
    doc, stderr = _trace_with_stderr(probe, "probe")
    closes = [c for c in doc["teardown"] if c["kind"] == "close" and c["role"] == "vm"]
    assert len(closes) == 1 and closes[0]["ret"] == 0 and closes[0]["duration_us"] > 0
    # The kernel's interval lies inside the program's own around the call.
    assert closes[0]["duration_us"] * 1000 <= _self_close_ns(stderr)
    validate(doc)
    td = doc["explanation"]["teardown"]
    assert td["how"] == "close" and td["role"] == "vm" and td["measured_us"] == closes[0]["duration_us"]
    assert set(td["predicted"]) == {"sync", "call_srcu", "created_vcpus", "call_srcu_expedited"}
    assert "srcu_barrier() had no callbacks to wait for" in td["text"] and td["started_by_ioctl"] is None
    text = run_cli("trace", "--", probe, "probe", timeout=120).stdout
    assert any(" close(vm) = 0 <" in line for line in text.splitlines())
    assert "teardown: close(vm) " in text


def test_a_vm_closed_right_after_a_registration_waits_for_its_callbacks(probe):
    doc, stderr = _trace_with_stderr(probe, "registered")
    roles = [c["role"] for c in doc["teardown"] if c["kind"] == "close"]
    assert roles == ["vcpu0", "vm"]  # the vCPU fd first: the VM fd's close drops the last reference
    td = doc["explanation"]["teardown"]
    assert td["how"] == "close" and td["role"] == "vm"
    # Each variant says what it would take; on a kernel that waits (the model's call_srcu), the closest
    # variant names the registration whose grace period's callbacks the barrier waited for.
    if td["closest"] in ("call_srcu", "created_vcpus"):
        ioeventfd = next(e["index"] for e in doc["ioctls"] if e["request"] == "KVM_IOEVENTFD")
        assert td["started_by_ioctl"] == ioeventfd
        assert "srcu_barrier waited" in td["text"] and "KVM_IOEVENTFD" in td["text"]
    assert td["measured_us"] * 1000 <= _self_close_ns(stderr)


def test_a_vm_left_open_is_destroyed_in_the_exit(probe):
    doc = _trace(probe, "exit")
    kinds = [c["kind"] for c in doc["teardown"]]
    assert "exit_group" in kinds and not any(c["role"] == "vm" for c in doc["teardown"] if c["kind"] == "close")
    td = doc["explanation"]["teardown"]
    assert td["how"] == "exit" and td["call"] == "exit_group" and td["measured_us"] is not None


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_a_traced_qemu_whose_guest_ends_shows_its_vms_teardown(tmp_path):
    """QEMU with a firmware that writes 0 to an isa-debug-exit port at the reset vector: the guest ends
    QEMU (exit status 1) by itself, and the trace, ``--until exit``, records the VM's teardown (QEMU
    leaves its KVM fds to its exit, or closes them) and explains it."""
    assert QEMU is not None
    bios = bytearray(64 << 10)
    bios[0xFFF0:0xFFF5] = bytes([0xB0, 0x00, 0xE6, 0xF4, 0xF4])  # mov al, 0; out 0xf4, al; hlt
    firmware = tmp_path / "exit.bin"
    firmware.write_bytes(bytes(bios))
    doc = _trace(QEMU, "-enable-kvm", "-machine", "pc", "-m", "64", "-smp", "1", "-nodefaults", "-display", "none",
                 "-no-reboot", "-bios", str(firmware), "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                 until=("--until", "exit", "--timeout", "60"), code=1)
    assert doc["tracee"]["exit_code"] == 1 and not doc["tracee"]["ended_by_tracer"]
    td = doc["explanation"]["teardown"]
    assert td is not None and td["how"] in ("close", "exit") and td["measured_us"] is not None
    assert (td["closest"] is None or td["closest"] in td["predicted"]) and td["text"].startswith("model (")
    if td["how"] == "exit":
        assert any(c["kind"] == "exit_group" for c in doc["teardown"])
