"""Resources: nothing leaks across many VMs and runs; interrupted runs release everything and exit
with the documented codes; a stress run with concurrent registrations and memslot moves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
from conftest import ROOT
from readiness import wait_running_vcpus

from minivmm.devices.console import Console
from minivmm.kvm import Kvm
from minivmm.kvm.memory import GuestMemory
from minivmm.kvm.uapi import lib
from minivmm.kvm.vm import IoEvent
from minivmm.vmm.boot import Mode
from minivmm.vmm.machine import Machine, MachineConfig
from minivmm.vmm.report import RunOutcome

pytestmark = pytest.mark.kvm

LOOP = bytes.fromhex("ebfe")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_thousand_vms_leave_fds_and_rss_unchanged():
    efd = lib.eventfd(0, lib.EFD_CLOEXEC)
    kvm = Kvm()

    def one() -> None:
        with kvm.create_vm() as vm, GuestMemory(0, 1 << 20) as mem:
            vm.set_user_memory_region(0, 0, mem.size, mem.host_addr)
            vm.register_ioevent(IoEvent(0xD0000000, 4, efd))
            vm.create_vcpu(0)

    try:
        for _ in range(50):  # warm up allocator caches before measuring
            one()
        fds, rss = open_fds(), rss_kib()
        for _ in range(1000):
            one()
        assert open_fds() == fds
        assert rss_kib() - rss < 8 * 1024, "resident memory grew by more than 8 MiB"
    finally:
        kvm.close()
        os.close(efd)


def test_machines_that_time_out_release_everything(guest_image):
    image = guest_image("hello")
    with Machine(MachineConfig(), image, Console()) as m:
        m.run()
    fds = open_fds()
    for _ in range(20):
        with Machine(MachineConfig(timeout=0.05, vcpus=2), LOOP, Console()) as m:
            assert m.run().outcome is RunOutcome.TIMEOUT
    assert open_fds() == fds


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_stops_the_run_reports_and_exits_with_its_code(tmp_path, sig, code, word):
    image = tmp_path / "loop.bin"
    image.write_bytes(LOOP)
    # As from a terminal: SIGINT at its default disposition. (A job started with SIGINT ignored, e.g. in
    # the background of a non-interactive shell, keeps ignoring it, as Unix programs should.)
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "minivmm"), "boot", str(image),
                             "--vcpus", "2", "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_running_vcpus(proc, sig)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err
    assert word in out and "jmp 0x1000" in out and "Traceback" not in err


def test_no_permission_on_the_kvm_device_is_one_line(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user")
    image = ROOT / "guest" / "hello.bin"

    def drop() -> None:
        os.setgid(65534)
        os.setuid(65534)

    try:
        proc = subprocess.run([sys.executable, "-m", "minivmm", "boot", str(image)], capture_output=True,
                              text=True, cwd=ROOT, preexec_fn=drop, env={**os.environ, "HOME": str(tmp_path)})
    except PermissionError:
        pytest.skip("the interpreter cannot be run by the unprivileged user (it lives under a private home)")
    if proc.returncode != 2 and "minivmm" not in proc.stderr:
        pytest.skip(f"the unprivileged user cannot import minivmm here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not readable and writable" in lines[0]


@pytest.mark.slow
def test_stress_vcpus_with_concurrent_registrations_and_memslot_moves(guest_image):
    """regmulti's vCPUs hammer doorbells and re-register them, while a host thread registers and
    unregisters other ioeventfds and moves a spare memslot; shadow on, bounded in time."""
    fds = open_fds()
    stop = threading.Event()
    counts = {"ioeventfd": 0, "memslot": 0}
    errors: list[BaseException] = []
    with Machine(MachineConfig(mode=Mode.PROTECTED, vcpus=3, guest_iterations=600, timeout=60),
                 guest_image("regmulti"), Console()) as m:
        spare = GuestMemory(0, 1 << 20)
        efd = lib.eventfd(0, lib.EFD_CLOEXEC | lib.EFD_NONBLOCK)

        def churn() -> None:
            try:
                base = 0x40000000
                while not stop.is_set():
                    ev = IoEvent(0xD0800000 + 0x1000 * (counts["ioeventfd"] % 8), 4, efd)
                    m.vm.register_ioevent(ev)
                    m.vm.unregister_ioevent(ev)
                    counts["ioeventfd"] += 1
                    m.vm.set_user_memory_region(5, base, spare.size, spare.host_addr)
                    m.vm.set_user_memory_region(5, base, 0, spare.host_addr)
                    base ^= 0x10000000
                    counts["memslot"] += 1
            except BaseException as e:  # reported below; a thread must not die silently
                errors.append(e)

        t = threading.Thread(target=churn)
        t.start()
        try:
            report = m.run()
        finally:
            stop.set()
            t.join(30)
        spare.close()
        os.close(efd)
    assert not t.is_alive() and not errors, errors
    assert report.outcome is RunOutcome.HALTED, report.extra["shadow"]["first_violations"]
    assert report.console == "regmulti: ok\n"
    assert counts["ioeventfd"] > 0 and counts["memslot"] > 0
    dyn = report.extra["dynamic_doorbells"]
    assert dyn["kernel_counted"] + dyn["userspace_writes"] == dyn["guest_reported_writes"] == 1200
    assert open_fds() == fds
