"""Bounded memory for whatever a guest drives: with the shadow on, a guest that
reads ever-new MMIO addresses, or registers and unregisters doorbells in a loop, must not grow the
VMM's resident memory. Each run is long enough that the old per-address claim cache or the unpruned
bus versions grew RSS by tens of MiB; now it stays within a few."""

from __future__ import annotations

import threading

import pytest

from minivmm.devices.console import Console
from minivmm.vmm.boot import Mode
from minivmm.vmm.machine import Machine, MachineConfig
from minivmm.vmm.report import RunOutcome

pytestmark = pytest.mark.kvm

MiB = 1024 * 1024
#: Growth allowed over a run: allocator warm-up and the bounded caches, far below the old leaks.
BOUND = 4 * MiB


def rss() -> int:
    """This process's resident set, in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024


def run_sampling_rss(image: bytes, **config):
    """Boot ``image`` with the shadow on; return (report, growth): how far RSS rose, over the last two
    thirds of the run, above the highest it reached in the first third (allocator and free-list
    warm-up; the old leaks grew linearly to the end). RSS is sampled from another thread every 20 ms."""
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            samples.append(rss())

    with Machine(MachineConfig(timeout=60, **config), image, Console()) as machine:
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            report = machine.run()
        finally:
            done.set()
            sampler.join()
    assert len(samples) >= 30, "the run was too short to judge"
    warm = max(samples[:len(samples) // 3])
    return report, max(samples) - warm


@pytest.mark.slow
def test_an_mmio_walking_guest_does_not_grow_the_vmm(guest_image):
    # 200,000 reads at 200,000 distinct addresses: the per-address cache grew RSS ~28 MiB over this run.
    report, growth = run_sampling_rss(guest_image("mmiowalk"), mode=Mode.LONG, guest_iterations=200_000)
    assert report.outcome is RunOutcome.HALTED and report.console == "mmiowalk: ok\n"
    assert report.exits["mmio_read"] == 200_001 and report.extra["shadow"]["exits_checked"] >= 200_001
    assert growth < BOUND, f"RSS grew {growth / MiB:.1f} MiB"


@pytest.mark.slow
def test_a_register_unregister_loop_does_not_grow_the_vmm(guest_image):
    # 8,000 registrations and deregistrations, 16,000 bus versions: the versions (and the twin's
    # record of its grace periods) grew RSS ~20 MiB over this run.
    report, growth = run_sampling_rss(guest_image("regloop"), mode=Mode.PROTECTED, guest_iterations=8000)
    assert report.outcome is RunOutcome.HALTED and report.console == "regloop: ok\n"
    sh = report.extra["shadow"]
    assert sh["registrations_mirrored"] == 8001 and sh["bus_versions"] == 16002
    assert sh["bus_versions_kept"] <= 4
    assert growth < BOUND, f"RSS grew {growth / MiB:.1f} MiB"
