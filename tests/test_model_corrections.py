"""Corrections to the kernel model found in review, each against the kernel rule."""

from __future__ import annotations

import errno

import pytest

from kernel_model import irqchip, srcutree
from kernel_model.arch.arm64 import ARM64_VGIC_DIST_BASE, ARM64_VGIC_REDIST_BASE
from kernel_model.kvm_host import KvmIoctlError
from kernel_model.kvm_io_bus import KvmBus
from kernel_model.kvm_main import KvmModel
from kernel_model.platforms import get_platform
from kernel_model.predict import predict
from kernel_model.sequences import SEQUENCES
from kernel_model.sim import Sim
from kernel_model.variants import get_variant


def vm(platform: str = "pvm", variant: str = "call_srcu", hz: int = 250, nr_cpu_ids: int = 2) -> KvmModel:
    return KvmModel(Sim(hz, 0.3), get_variant(variant), get_platform(platform), nr_cpu_ids=nr_cpu_ids)


# --- KVM_IOEVENTFD: zero length ---------------------------------------------------------------------

def test_zero_length_pio_ioeventfd_is_accepted_on_the_pio_bus_only():
    kvm = vm()
    kvm.ioeventfd(0x510, 0, None, pio=True)
    assert kvm.claimant(KvmBus.KVM_PIO_BUS, 0x510, 2) is not None
    assert kvm.bus_version(KvmBus.KVM_FAST_MMIO_BUS) == 0  # only MMIO goes on the fast bus


@pytest.mark.parametrize("pio", [False, True])
def test_zero_length_with_datamatch_is_einval(pio):
    kvm = vm()
    with pytest.raises(KvmIoctlError) as e:
        kvm.ioeventfd(0x520 if pio else 0xD0000000, 0, 5, pio=pio)
    assert e.value.errno == errno.EINVAL
    assert kvm.registrations == 0


# --- the APIC-access page: one swap per memslot address space ---------------------------------------

@pytest.mark.parametrize("platform,swaps", [("vmx", 2), ("svm", 2), ("svm-noavic", 0), ("pvm", 0)])
def test_apic_access_page_swaps_once_per_address_space(platform, swaps):
    kvm = vm(platform)
    kvm.create_irqchip()
    before = kvm.memslot_swaps
    kvm.create_vcpu(0)
    kvm.create_vcpu(1)
    assert kvm.memslot_swaps - before == swaps


def test_svm_avic_inhibited_by_a_reinjecting_pit_skips_the_apic_access_page():
    kvm = vm("svm")
    kvm.create_irqchip()
    kvm.arch.kvm_set_apicv_inhibit("pit-reinject")
    kvm.create_vcpu(0)
    assert kvm.memslot_swaps == 0 and not kvm.arch.apic_access_memslot_enabled


def test_svm_with_avic_stalls_in_the_first_vcpu_like_vmx():
    seq = SEQUENCES["firecracker"]
    i = next(k for k, s in enumerate(seq.steps) if s.label == "KVM_CREATE_VCPU, 0")
    stall = {p: predict(seq, "call_srcu", 100, p, samples=50).steps[i].stats()["p50"]
             for p in ("vmx", "svm", "svm-noavic")}
    assert stall["svm"] == pytest.approx(stall["vmx"], rel=0.05)
    assert stall["svm"] > 5_000 > stall["svm-noavic"]


# --- srcu_get_delay()'s no-delay limits depend on HZ ------------------------------------------------

@pytest.mark.parametrize("hz,phase,total", [(100, 1000, 1000), (250, 1000, 1000), (1000, 400, 400),
                                            (10_000, 40, 100), (1_000_000, 3, 100)])
def test_nodelay_limits_follow_hz(hz, phase, total):
    assert srcutree.srcu_default_max_nodelay_phase(hz) == phase
    assert srcutree.srcu_default_max_nodelay(hz) == total
    ssp = srcutree.SrcuStruct(Sim(hz))
    assert (ssp.srcu_max_nodelay_phase, ssp.srcu_max_nodelay) == (phase, total)


@pytest.mark.parametrize("hz", [250, 1000])
def test_expedited_gp_polls_without_delay_only_up_to_the_hz_limit(hz):
    ssp = srcutree.SrcuStruct(Sim(hz))
    ssp.srcu_gp_seq_needed = ssp.srcu_gp_seq_needed_exp = 4
    srcutree.srcu_gp_start(ssp)
    delays = [srcutree.srcu_get_delay(ssp) for _ in range(1200)]
    assert delays.index(1) == srcutree.srcu_default_max_nodelay_phase(hz)
    assert not any(delays[:delays.index(1)])


# --- srcu_struct size at init -----------------------------------------------------------------------

@pytest.mark.parametrize("cpus,state", [(2, srcutree.SRCU_SIZE_SMALL), (127, srcutree.SRCU_SIZE_SMALL),
                                        (128, srcutree.SRCU_SIZE_BIG), (512, srcutree.SRCU_SIZE_BIG)])
def test_srcu_struct_starts_big_from_big_cpu_lim(cpus, state):
    assert srcutree.SrcuStruct(Sim(250), nr_cpu_ids=cpus).srcu_size_state == state


def test_big_srcu_records_requests_in_the_funnel_and_times_like_small():
    small, big = vm(nr_cpu_ids=2), vm(nr_cpu_ids=256)
    durations = {}
    for name, kvm in (("small", small), ("big", big)):
        t = []
        for i in range(3):
            t0 = kvm.sim.now
            kvm.ioeventfd(0xD0000050 + 0x1000 * i, 4, 0)
            t.append(kvm.sim.now - t0)
        t0 = kvm.sim.now
        kvm.set_user_memory_region(0, 0, 1 << 20)
        t.append(kvm.sim.now - t0)
        durations[name] = t
    # Alike but for where the callbacks run: BIG queues them on the updater's CPU, whose kworker is
    # still finishing process_srcu; SMALL on the boot CPU's, which is free.
    assert durations["big"][:3] == durations["small"][:3]
    assert 0 <= durations["big"][-1] - durations["small"][-1] <= 5_000
    assert durations["big"][-1] > 1_000_000  # the transferred normal grace period
    leaf = big.srcu.funnel_path[0]
    assert any(seq not in (srcutree.SRCU_SNP_INIT_SEQ,) for seq in leaf.srcu_have_cbs)
    assert not small.srcu.funnel_path


# --- arm64: where the vGICv3 registers its frames -----------------------------------------------------
# vgic-mmio-v3.c vgic_register_redist_iodev() / vgic_v3_set_redist_base(), vgic-init.c vgic_init() and
# kvm_vgic_map_resources(): the redistributors register when both the vCPU and the region exist, the
# distributor at the first KVM_RUN, and KVM_DEV_ARM_VGIC_CTRL_INIT registers nothing.

def test_arm64_vgic_ctrl_init_registers_nothing():
    kvm = vm("arm64")
    kvm.create_vcpu(0)
    kvm.create_irqchip()
    kvm.arch.vgic_init()
    kvm.arch.vgic_init()
    assert kvm.registrations == 0
    assert kvm.arch.vgic_initialized


def test_arm64_redistributors_register_when_the_region_is_set_then_per_new_vcpu():
    kvm = vm("arm64")
    kvm.create_vcpu(0)
    kvm.create_vcpu(1)
    kvm.create_irqchip()
    assert kvm.registrations == 0
    kvm.arch.kvm_vgic_addr("dist", ARM64_VGIC_DIST_BASE)
    assert kvm.registrations == 0  # the distributor's base is only recorded
    kvm.arch.kvm_vgic_addr("redist", ARM64_VGIC_REDIST_BASE)
    assert kvm.registrations == 2  # one per existing vCPU
    vcpu1_sgi_frame = ARM64_VGIC_REDIST_BASE + 0x20000 + 0x10000
    assert kvm.claimant(KvmBus.KVM_MMIO_BUS, vcpu1_sgi_frame, 4) is not None
    kvm.create_vcpu(2)
    assert kvm.registrations == 3
    assert kvm.claimant(KvmBus.KVM_MMIO_BUS, ARM64_VGIC_REDIST_BASE + 2 * 0x20000, 4) is not None
    with pytest.raises(KvmIoctlError) as e:
        kvm.arch.kvm_vgic_addr("redist", 0x09000000)
    assert e.value.errno == errno.EEXIST


def test_arm64_distributor_registers_at_the_first_kvm_run():
    kvm = vm("arm64")
    kvm.create_irqchip()
    kvm.arch.kvm_vgic_addr("dist", ARM64_VGIC_DIST_BASE)
    kvm.arch.kvm_vgic_addr("redist", ARM64_VGIC_REDIST_BASE)
    kvm.create_vcpu(0)
    kvm.create_vcpu(1)
    kvm.arch.vgic_init()
    assert kvm.claimant(KvmBus.KVM_MMIO_BUS, ARM64_VGIC_DIST_BASE, 4) is None
    before = kvm.registrations
    kvm.run_vcpu(0, 10_000, 100_000)
    assert kvm.registrations == before + 1
    assert kvm.claimant(KvmBus.KVM_MMIO_BUS, ARM64_VGIC_DIST_BASE, 4) is not None
    kvm.run_vcpu(1, 10_000, 100_000)
    assert kvm.registrations == before + 1


@pytest.mark.parametrize("setup, code", [("no-addresses", errno.ENXIO), ("no-init", errno.EBUSY)])
def test_arm64_first_kvm_run_refuses_an_unprepared_vgic(setup, code):
    kvm = vm("arm64")
    kvm.create_vcpu(0)
    kvm.create_irqchip()
    if setup == "no-init":
        kvm.arch.kvm_vgic_addr("dist", ARM64_VGIC_DIST_BASE)
        kvm.arch.kvm_vgic_addr("redist", ARM64_VGIC_REDIST_BASE)
    with pytest.raises(KvmIoctlError) as e:
        kvm.run_vcpu(0, 10_000, 100_000)
    assert e.value.errno == code


def test_arm64_vgic_attributes_need_the_vgic_device():
    kvm = vm("arm64")
    for call in (kvm.arch.vgic_init, lambda: kvm.arch.kvm_vgic_addr("redist", ARM64_VGIC_REDIST_BASE)):
        with pytest.raises(KvmIoctlError) as e:
            call()
        assert e.value.errno == errno.ENODEV


def test_each_platform_runs_its_architectures_kvm():
    from kernel_model.arch.arm64 import Arm64
    from kernel_model.arch.x86 import X86
    from kernel_model.platforms import PLATFORMS, Arch
    for name, platform in PLATFORMS.items():
        arch = vm(name).arch
        assert isinstance(arch, {Arch.X86: X86, Arch.ARM64: Arm64}[platform.arch]), name
    assert vm("arm64").arch.user_mem_slots == 32767 and vm("vmx").arch.user_mem_slots == 32764


def test_arm64_redistributor_registration_starts_the_grace_period_the_next_memslot_waits_for():
    kvm = vm("arm64", hz=100)
    kvm.create_vcpu(0)
    kvm.create_irqchip()
    kvm.arch.kvm_vgic_addr("redist", ARM64_VGIC_REDIST_BASE)
    t0 = kvm.sim.now
    kvm.set_user_memory_region(0, 0x80000000, 1 << 20)
    assert kvm.sim.now - t0 > 10_000_000 * 0.9  # (2 - phase) jiffies at HZ=100, phase 0.3


def test_x86_irqchip_synchronizes_irq_srcu_not_kvm_srcu():
    kvm = vm("pvm")
    kvm.create_irqchip()
    assert len(kvm.irq_srcu.grace_periods) == 1 and kvm.irq_srcu.grace_periods[0].expedited_at_end
    # kvm->srcu's normal grace period (the irqchip's registrations) does not delay irq_srcu's:
    t0 = kvm.sim.now
    irqchip.kvm_set_irq_routing(kvm, 1)
    assert kvm.sim.now - t0 < 100_000 and kvm.srcu.gp_in_flight


# --- KVM_CREATE_VCPU without an in-kernel LAPIC: the kvm_has_noapic_vcpu static key ----------------

def _vcpu_costs(platform: str, irqchip: bool) -> list[int]:
    kvm = vm(platform)
    if irqchip:
        kvm.create_irqchip()
    out = []
    for vcpu_id in range(3):
        t0 = kvm.sim.now
        kvm.create_vcpu(vcpu_id)
        out.append(kvm.sim.now - t0)
    return out


def test_the_first_lapic_less_vcpu_pays_the_static_key_patch_and_only_it():
    from kernel_model.costs import Costs
    c = Costs()
    assert _vcpu_costs("pvm", irqchip=False) == [c.create_vcpu + c.static_key_enable, c.create_vcpu, c.create_vcpu]
    assert _vcpu_costs("pvm", irqchip=True) == [c.create_vcpu] * 3  # the LAPIC is in the kernel: no key
    assert _vcpu_costs("arm64", irqchip=False) == [c.create_vcpu] * 3  # an x86 key


# --- srcu_should_expedite() and the callback-delay timer ------------------------------------------------

def _srcu(caller_on_boot_cpu: float):
    from kernel_model.costs import Costs
    from kernel_model.tick import TickEnvironment
    return srcutree.SrcuStruct(Sim(250, 0.3, Costs(cpus=TickEnvironment(caller_on_boot_cpu=caller_on_boot_cpu))))


def test_should_expedite_sees_only_the_calling_cpus_callbacks():
    # SMALL: every callback is on the boot CPU's srcu_data; srcu_should_expedite() looks at the calling
    # CPU's own, so a caller on another CPU does not see them (the later checks decide then).
    for on_boot, sees in ((1.0, True), (0.0, False)):
        ssp = _srcu(on_boot)
        ssp.sim.run_until(1_000_000)  # past exp_holdoff
        srcutree.call_srcu(ssp, lambda: None)
        ssp.srcu_gp_seq_needed = ssp.srcu_gp_seq  # leave only the callback list to decide
        assert srcutree.srcu_should_expedite(ssp) is (not sees)


def test_should_expedite_refuses_after_fast_readers_on_the_calling_cpu():
    ssp = _srcu(1.0)
    ssp.sim.run_until(1_000_000)
    assert srcutree.srcu_should_expedite(ssp)
    idx = srcutree.srcu_read_lock(ssp, srcutree.SRCU_READ_FLAVOR_FAST)
    srcutree.srcu_read_unlock(ssp, idx)
    assert not srcutree.srcu_should_expedite(ssp)


def test_the_callback_delay_timer_slips_too():
    # A normal grace period's callbacks wait on sdp->delay_work (srcu_schedule_cbs_sdp(sdp, 1)): a
    # timer-wheel timer on the CPU that ended the grace period, which slips like process_srcu's.
    from kernel_model.costs import Costs
    from kernel_model.tick import TickEnvironment
    times = []
    for env in (TickEnvironment(), TickEnvironment(other_tick_share=1.0, other_tick_persist=1.0,
                                                   other_holds_duty=1.0, caller_keeps_tick=1.0,
                                                   caller_tick_first=1.0, caller_first_persist=1.0)):
        ssp = srcutree.SrcuStruct(Sim(250, 0.3, Costs(cpus=env)))
        ran: list[int] = []
        srcutree.call_srcu(ssp, lambda s=ssp, r=ran: r.append(s.sim.now))
        ssp.sim.wait_for(lambda r=ran: bool(r), "the callback")
        times.append((ran[0], ssp.sim.ticks.slips))
    (quiet, _), (slipping, slips) = times
    assert slips == 2 and slipping - quiet == 2 * 4_000_000  # process_srcu's timer, then the delay timer
