"""A VM as the kernel sees it: the ioctls a VMM issues, with their side effects on kvm->buses[],
kvm->srcu and the memslots, per platform and kernel variant; SRCU readers (vCPUs handling exits);
and the invariant checks.

Modelled on virt/kvm/kvm_main.c (kvm_create_vm, kvm_vm_ioctl_create_vcpu, kvm_set_memslot and
kvm_swap_active_memslots, kvm_io_bus_register_dev / _unregister_dev, kvm_destroy_vm) and
virt/kvm/eventfd.c (kvm_assign_ioeventfd / kvm_deassign_ioeventfd), v6.18.

Simplified: the irq_srcu struct, irq routing, dirty logging, mmu notifiers and the arch memslot work are
left out; an ioctl's own work is one fixed cost (``Costs``) plus whatever SRCU waits it does.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from kernel_model import srcutree
from kernel_model.costs import Costs
from kernel_model.invariants import InvariantChecker, ViolationKind
from kernel_model.kvm_io_bus import (NR_IOBUS_DEVS, InKernelDevice, Ioeventfd, KvmBus, KvmIoBus,
                                     KvmIoDevice, KvmIoRange, __kvm_io_bus_read, __kvm_io_bus_write,
                                     claimant, insert_range, remove_range)
from kernel_model.platforms import Platform
from kernel_model.sim import Sim
from kernel_model.variants import Variant

# Module-level aliases: inside a class body Python would mangle the kernel's double-underscore names.
_kvm_io_bus_write = __kvm_io_bus_write
_kvm_io_bus_read = __kvm_io_bus_read

#: arch/x86/include/asm/kvm_host.h: the private memslot of the APIC-access page, and its address.
APIC_ACCESS_PAGE_PRIVATE_MEMSLOT = 0x10000 + 1
APIC_DEFAULT_PHYS_BASE = 0xFEE00000
#: arm64 vGICv3 frames (QEMU virt's bases; sizes from include/kvm/arm_vgic.h: KVM_VGIC_V3_DIST_SIZE,
#: KVM_VGIC_V3_REDIST_SIZE = RD_base + SGI_base frames).
ARM64_VGIC_DIST_BASE = 0x08000000
ARM64_VGIC_DIST_SIZE = 0x10000
ARM64_VGIC_REDIST_BASE = 0x080A0000
ARM64_VGIC_REDIST_SIZE = 0x20000


class KvmIoctlError(OSError):
    """A modelled ioctl failed with ``errno`` (as the real one would)."""


@dataclass
class Memslot:
    """A memslot: guest-physical base and size."""

    base: int
    size: int


class Reader:
    """An SRCU reader of kvm->buses[] (a vCPU handling an exit), with the invariant checks.

    ``begin()``/``end()`` are srcu_read_lock()/unlock(); ``get_bus()`` is srcu_dereference() of
    ``kvm->buses[idx]``; ``write()``/``read()`` are kvm_io_bus_write()/read() on a bus obtained in
    this section. ``use()`` models a reader that kept a bus pointer from an earlier section.
    """

    def __init__(self, kvm: KvmModel, name: str) -> None:
        self.kvm = kvm
        self.name = name
        self.idx: int | None = None
        self.held: set[int] = set()       # id() of buses obtained in this section
        self.sections = 0
        self._min_version: dict[KvmBus, int] = {}

    @property
    def in_section(self) -> bool:
        """Whether the reader is inside srcu_read_lock()."""
        return self.idx is not None

    def begin(self) -> None:
        """srcu_read_lock(&kvm->srcu)."""
        if self.in_section:
            raise ValueError(f"{self.name}: nested read sections are not modelled")
        self.idx = srcutree.srcu_read_lock(self.kvm.srcu)
        self.sections += 1
        # Every registration that has returned by now must be visible in this section.
        self._min_version = dict(self.kvm.returned_version)

    def end(self) -> None:
        """srcu_read_unlock(&kvm->srcu): every bus obtained in the section is released."""
        if self.idx is None:
            raise ValueError(f"{self.name}: srcu_read_unlock() outside a read section")
        srcutree.srcu_read_unlock(self.kvm.srcu, self.idx)
        self.idx = None
        for bus_id in self.held:
            self.kvm._holders[bus_id] -= 1
        self.held.clear()

    def get_bus(self, bus_idx: KvmBus) -> KvmIoBus:
        """srcu_dereference(kvm->buses[bus_idx], &kvm->srcu), checked."""
        if not self.in_section:
            raise ValueError(f"{self.name}: kvm_get_bus_srcu() outside a read section")
        bus = self.kvm.buses[bus_idx]
        self._check(bus, "obtained")
        if id(bus) not in self.held:
            self.held.add(id(bus))
            self.kvm._holders[id(bus)] = self.kvm._holders.get(id(bus), 0) + 1
        return bus

    def use(self, bus: KvmIoBus) -> KvmIoBus:
        """Use a bus pointer the caller kept; flags it unless it was obtained in this section."""
        kvm = self.kvm
        kvm.checker.check(id(bus) in self.held, ViolationKind.LONG_TERM_REFERENCE, kvm.sim.now,
                          f"{self.name} used {bus.bus_idx.name} v{bus.version} outside the read section "
                          "it was obtained in", reader=self.name, bus=bus.bus_idx.name, version=bus.version)
        self._check(bus, "used")
        return bus

    def _check(self, bus: KvmIoBus, how: str) -> None:
        kvm = self.kvm
        kvm.checker.check(not bus.freed, ViolationKind.USE_AFTER_FREE, kvm.sim.now,
                          f"{self.name} {how} {bus.bus_idx.name} v{bus.version}, freed at {bus.freed_at} ns",
                          reader=self.name, bus=bus.bus_idx.name, version=bus.version)
        need = self._min_version.get(bus.bus_idx, 0) if self.in_section else 0
        kvm.checker.check(bus.version >= need, ViolationKind.STALE_BUS, kvm.sim.now,
                          f"{self.name} saw {bus.bus_idx.name} v{bus.version} although a registration that "
                          f"published v{need} returned before its read section began",
                          reader=self.name, bus=bus.bus_idx.name, version=bus.version, expected=need)

    def write(self, bus_idx: KvmBus, addr: int, length: int, value: int,
              bus: KvmIoBus | None = None) -> tuple[bool, KvmIoDevice | None, int]:
        """kvm_io_bus_write(): (handled in the kernel?, the device, the bus version used)."""
        b = self.use(bus) if bus is not None else self.get_bus(bus_idx)
        idx, dev = _kvm_io_bus_write(b, addr, length, value)
        return idx >= 0, dev, b.version

    def read(self, bus_idx: KvmBus, addr: int, length: int,
             bus: KvmIoBus | None = None) -> tuple[bool, KvmIoDevice | None, int]:
        """kvm_io_bus_read(): (handled in the kernel?, the device, the bus version used)."""
        b = self.use(bus) if bus is not None else self.get_bus(bus_idx)
        idx, dev = _kvm_io_bus_read(b, addr, length)
        return idx >= 0, dev, b.version


class VcpuReaders:
    """A running vCPU as SRCU sees it: a read section of ``section_ns`` every ``period_ns`` (each an
    exit handled in the kernel, with an MMIO bus lookup), from ``offset_ns`` on, until stopped."""

    def __init__(self, kvm: KvmModel, vcpu_id: int, section_ns: int, period_ns: int, offset_ns: int = 0) -> None:
        if not 0 < section_ns < period_ns:
            raise ValueError("a vCPU's read section must be shorter than its period")
        self.kvm = kvm
        self.reader = Reader(kvm, f"vcpu{vcpu_id}")
        self.section_ns = section_ns
        self.period_ns = period_ns
        self.running = True
        kvm.sim.at(kvm.sim.now + offset_ns, self._enter)

    def _enter(self) -> None:
        if not self.running:
            return
        self.reader.begin()
        self.reader.get_bus(KvmBus.KVM_MMIO_BUS)
        self.kvm.sim.at(self.kvm.sim.now + self.section_ns, self._leave)

    def _leave(self) -> None:
        self.reader.end()
        if self.running:
            self.kvm.sim.at(self.kvm.sim.now + self.period_ns - self.section_ns, self._enter)

    def stop(self) -> None:
        """The vCPU leaves KVM_RUN for good (after its current section, if any)."""
        self.running = False


class KvmModel:
    """One VM (``kvm_create_vm()``): buses, memslots, vCPUs and kvm->srcu, under a variant and platform."""

    def __init__(self, sim: Sim, variant: Variant, platform: Platform,
                 checker: InvariantChecker | None = None, nr_cpu_ids: int = 2) -> None:
        self.sim = sim
        self.costs: Costs = sim.costs
        self.variant = variant
        self.platform = platform
        self.checker = checker or InvariantChecker()
        self.srcu = srcutree.SrcuStruct(sim, nr_cpu_ids=nr_cpu_ids)
        #: kvm->irq_srcu: only kvm_set_irq_routing()'s synchronize is modelled on it (its readers, irqfd
        #: injection and the routing lookups, are left out: it is idle whenever it is synchronized here).
        self.irq_srcu = srcutree.SrcuStruct(sim, "kvm->irq_srcu", nr_cpu_ids=nr_cpu_ids)
        self.memslot_swaps = 0
        self.apicv_inhibits: set[str] = set()
        self.vgic_initialized = False
        self.srcu.on_callback_after_cleanup = self._callback_after_cleanup
        self.buses: dict[KvmBus, KvmIoBus] = {b: KvmIoBus(b, 0) for b in KvmBus}
        self._next_version = {b: 1 for b in KvmBus}
        #: The newest bus version published by a registration that has *returned* to userspace.
        self.returned_version: dict[KvmBus, int] = {b: 0 for b in KvmBus}
        self._holders: dict[int, int] = {}
        self.created_vcpus = 0
        self.apic_access_page_done = False
        self.irqchip = False
        self.memslots: dict[int, Memslot] = {}
        self.ioeventfds: list[Ioeventfd] = []
        self.vcpu_readers: dict[int, VcpuReaders] = {}
        self.destroyed = False
        self.buses_freed = 0
        self.registrations = 0

    # --- kernel internals ------------------------------------------------------------------------
    def kfree_bus(self, bus: KvmIoBus) -> None:
        """kfree() of a bus, checked: no reader that obtained it may still be in its read section."""
        holders = self._holders.get(id(bus), 0)
        self.checker.check(holders == 0, ViolationKind.USE_AFTER_FREE, self.sim.now,
                           f"{bus.bus_idx.name} v{bus.version} freed while {holders} reader(s) that obtained "
                           "it are still in their read sections", bus=bus.bus_idx.name, version=bus.version)
        bus.freed = True
        bus.freed_at = self.sim.now
        self.buses_freed += 1

    def _publish(self, bus_idx: KvmBus, new: KvmIoBus) -> KvmIoBus:
        """rcu_assign_pointer(kvm->buses[bus_idx], new); returns the old bus."""
        old = self.buses[bus_idx]
        self.buses[bus_idx] = new
        return old

    def kvm_io_bus_register_dev(self, bus_idx: KvmBus, addr: int, length: int, dev: KvmIoDevice) -> None:
        """Models kvm_io_bus_register_dev(): copy with the new range, publish, free the old bus by the
        variant's rule. ENOSPC past NR_IOBUS_DEVS devices (ioeventfds not counted)."""
        bus = self.buses[bus_idx]
        if bus.dev_count - bus.ioeventfd_count > NR_IOBUS_DEVS - 1:
            raise KvmIoctlError(errno.ENOSPC, f"{bus_idx.name}: more than {NR_IOBUS_DEVS} devices")
        self.sim.spend(self.costs.register_dev)
        version = self._next_version[bus_idx]
        self._next_version[bus_idx] += 1
        old = self._publish(bus_idx, insert_range(bus, KvmIoRange(addr, length, dev), version))
        self.registrations += 1
        self.variant.free_old_bus(self, old)

    def kvm_io_bus_unregister_dev(self, bus_idx: KvmBus, dev: KvmIoDevice) -> None:
        """Models kvm_io_bus_unregister_dev(): copy without the device, publish, and (in every variant)
        synchronize_srcu_expedited() before kfree() of the old bus."""
        bus = self.buses[bus_idx]
        version = self._next_version[bus_idx]
        new = remove_range(bus, dev, version)
        if new is None:
            return
        self._next_version[bus_idx] += 1
        self.sim.spend(self.costs.unregister_dev)
        old = self._publish(bus_idx, new)
        srcutree.synchronize_srcu_expedited(self.srcu)
        self.kfree_bus(old)

    def kvm_swap_active_memslots(self) -> None:
        """Models kvm_swap_active_memslots(): publish the other memslot set and wait for readers of the
        old one: ``synchronize_srcu_expedited(&kvm->srcu)``. This is where a pending normal grace
        period is "transferred" to the caller."""
        self.memslot_swaps += 1
        srcutree.synchronize_srcu_expedited(self.srcu)

    def kvm_set_apicv_inhibit(self, reason: str) -> None:
        """Models kvm_set_apicv_inhibit() (arch/x86/kvm/x86.c): e.g. ``"pit-reinject"`` when an in-kernel
        PIT is created in reinject mode (kvm_pit_set_reinject())."""
        self.apicv_inhibits.add(reason)

    def kvm_vgic_ctrl_init(self, dist_base: int = ARM64_VGIC_DIST_BASE,
                           redist_base: int = ARM64_VGIC_REDIST_BASE) -> None:
        """arm64 KVM_SET_DEVICE_ATTR(KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT) on a vGICv3:
        vgic_init() registers the distributor and one redistributor per created vCPU on the MMIO bus
        (each a kvm_io_bus_register_dev(), so each frees an old bus by the variant's rule). Creating
        the vGIC device registers nothing."""
        self._alive()
        if self.platform.name != "arm64":
            raise KvmIoctlError(errno.ENODEV, "KVM_DEV_ARM_VGIC_CTRL_INIT: not an arm64 VM")
        if self.vgic_initialized:
            return  # vgic_init() on an initialized vGIC does nothing
        self.kvm_io_bus_register_dev(KvmBus.KVM_MMIO_BUS, dist_base, ARM64_VGIC_DIST_SIZE,
                                     InKernelDevice("vgic-dist"))
        for i in range(self.created_vcpus):
            self.kvm_io_bus_register_dev(KvmBus.KVM_MMIO_BUS, redist_base + i * ARM64_VGIC_REDIST_SIZE,
                                         ARM64_VGIC_REDIST_SIZE, InKernelDevice(f"vgic-redist{i}"))
        self.kvm_set_irq_routing()  # vgic_init() -> kvm_vgic_setup_default_irq_routing()
        self.vgic_initialized = True
        self._registrations_returned()

    def _registrations_returned(self) -> None:
        self.returned_version = {b: self.buses[b].version for b in KvmBus}

    def _callback_after_cleanup(self, cb: srcutree.SrcuCallback) -> None:
        self.checker.check(False, ViolationKind.CALLBACK_AFTER_CLEANUP, self.sim.now,
                           f"SRCU callback {cb.name} ran after cleanup_srcu_struct(&kvm->srcu)", callback=cb.name)

    # --- ioctls --------------------------------------------------------------------------------------
    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: register the platform's in-kernel interrupt controller devices."""
        self._alive()
        if self.irqchip:
            raise KvmIoctlError(errno.EEXIST, "KVM_CREATE_IRQCHIP: irqchip already exists")
        if self.platform.irqchip_before_vcpus and self.created_vcpus:
            raise KvmIoctlError(errno.EINVAL, "KVM_CREATE_IRQCHIP: vCPUs already exist")
        self.sim.spend(self.costs.create_irqchip)
        for bus_idx, addr, length, name in self.platform.irqchip_devices:
            self.kvm_io_bus_register_dev(bus_idx, addr, length, InKernelDevice(name))
        if self.platform.irqchip_before_vcpus:
            # x86 kvm_arch_vm_ioctl(KVM_CREATE_IRQCHIP) ends with kvm_setup_default_irq_routing().
            self.kvm_set_irq_routing()
        self.irqchip = True
        self._registrations_returned()

    def kvm_set_irq_routing(self) -> None:
        """Models kvm_set_irq_routing() (virt/kvm/irqchip.c): publish the new routing table, then
        ``synchronize_srcu_expedited(&kvm->irq_srcu)`` before freeing the old one. irq_srcu is a
        separate srcu_struct: kvm->srcu's pending grace periods do not delay it, but on a busy host its
        expedited grace period still waits for the SRCU kworker and the caller to get a CPU."""
        srcutree.synchronize_srcu_expedited(self.irq_srcu)

    def ioeventfd(self, addr: int, length: int, datamatch: int | None = None, pio: bool = False) -> Ioeventfd:
        """KVM_IOEVENTFD (assign), models kvm_assign_ioeventfd() / kvm_assign_ioeventfd_idx(): EINVAL for
        a bad length or zero length with DATAMATCH; EEXIST on a collision (ioeventfd_check_collision());
        a zero-length MMIO ioeventfd is also put on KVM_FAST_MMIO_BUS (a zero-length PIO one is not)."""
        self._alive()
        if length not in (0, 1, 2, 4, 8):
            raise KvmIoctlError(errno.EINVAL, f"KVM_IOEVENTFD: bad length {length}")
        if not length and datamatch is not None:
            # kvm_assign_ioeventfd(): "ioeventfd with no length can't be combined with DATAMATCH".
            # A zero-length PIO ioeventfd is accepted (6.18): it goes on the PIO bus only.
            raise KvmIoctlError(errno.EINVAL, "KVM_IOEVENTFD: zero length with DATAMATCH")
        self.sim.spend(self.costs.ioeventfd)
        p = Ioeventfd(addr, length, datamatch, pio, name=f"ioeventfd@{addr:#x}")
        if any(p.collides_with(q) for q in self.ioeventfds):
            raise KvmIoctlError(errno.EEXIST, f"KVM_IOEVENTFD: collides at {addr:#x}")
        bus_idx = KvmBus.KVM_PIO_BUS if pio else KvmBus.KVM_MMIO_BUS
        self.kvm_io_bus_register_dev(bus_idx, addr, length, p)
        if not pio and not length:
            self.kvm_io_bus_register_dev(KvmBus.KVM_FAST_MMIO_BUS, addr, 0, p)
        self.ioeventfds.append(p)
        self._registrations_returned()
        return p

    def ioeventfd_deassign(self, addr: int, length: int, datamatch: int | None = None, pio: bool = False) -> None:
        """KVM_IOEVENTFD with DEASSIGN, models kvm_deassign_ioeventfd(): ENOENT if nothing matches."""
        self._alive()
        self.sim.spend(self.costs.ioeventfd)
        for p in self.ioeventfds:
            if (p.addr, p.length, p.datamatch, p.pio) == (addr, length, datamatch, pio):
                break
        else:
            raise KvmIoctlError(errno.ENOENT, f"KVM_IOEVENTFD deassign: nothing at {addr:#x}")
        self.kvm_io_bus_unregister_dev(KvmBus.KVM_PIO_BUS if pio else KvmBus.KVM_MMIO_BUS, p)
        if not pio and not length:
            self.kvm_io_bus_unregister_dev(KvmBus.KVM_FAST_MMIO_BUS, p)
        self.ioeventfds.remove(p)
        self._registrations_returned()

    def set_user_memory_region(self, slot: int, base: int, size: int) -> None:
        """KVM_SET_USER_MEMORY_REGION, models kvm_set_memslot(): create = one memslot swap; delete and
        move = two (invalidate, then commit); an unchanged region returns early with none."""
        self._alive()
        self.sim.spend(self.costs.set_user_memory_region)
        old = self.memslots.get(slot)
        if size == 0:
            if old is None:
                raise KvmIoctlError(errno.EINVAL, f"KVM_SET_USER_MEMORY_REGION: slot {slot} does not exist")
            del self.memslots[slot]
            swaps = 2
        elif old is None:
            self.memslots[slot] = Memslot(base, size)
            swaps = 1
        elif (old.base, old.size) == (base, size):
            swaps = 0
        elif old.size != size:
            raise KvmIoctlError(errno.EINVAL, f"KVM_SET_USER_MEMORY_REGION: slot {slot} cannot change size")
        else:
            self.memslots[slot] = Memslot(base, size)
            swaps = 2
        for _ in range(swaps):
            self.kvm_swap_active_memslots()

    def create_vcpu(self, vcpu_id: int) -> None:
        """KVM_CREATE_VCPU: ``created_vcpus`` goes up first; on VMX (and SVM with AVIC) with an in-kernel
        LAPIC the first vCPU allocates the APIC-access page through a private memslot: one memslot swap
        per memslot address space (arch/x86/kvm/x86.c __x86_set_memory_region(), two with SMM).
        On SVM an APICv inhibit present at that moment (an in-kernel PIT in reinject mode) skips it."""
        self._alive()
        self.created_vcpus += 1
        first = self.created_vcpus == 1
        self.sim.spend(self.costs.create_vcpu_first if first else self.costs.create_vcpu)
        if (self.platform.apic_access_memslot_on_first_vcpu and self.irqchip and not self.apic_access_page_done
                and not self.apicv_inhibits & self.platform.apicv_inhibits_apic_access_page):
            # kvm_alloc_apic_access_page() -> __x86_set_memory_region(): the private slot is created in
            # every memslot address space (two when the VM supports SMM), one swap each.
            self.memslots[APIC_ACCESS_PAGE_PRIVATE_MEMSLOT] = Memslot(APIC_DEFAULT_PHYS_BASE, 4096)
            for _ in range(self.platform.memslot_address_spaces):
                self.kvm_swap_active_memslots()
            self.apic_access_page_done = True

    def run_vcpu(self, vcpu_id: int, section_ns: int, period_ns: int, offset_ns: int = 0) -> VcpuReaders:
        """The first KVM_RUN of a vCPU: from now on it handles exits inside SRCU read sections."""
        self._alive()
        self.sim.spend(self.costs.kvm_run_entry)
        readers = VcpuReaders(self, vcpu_id, section_ns, period_ns, offset_ns)
        self.vcpu_readers[vcpu_id] = readers
        return readers

    def stop_vcpus(self) -> None:
        """Every vCPU leaves KVM_RUN; returns once their read sections are over."""
        for r in self.vcpu_readers.values():
            r.stop()
        self.sim.wait_for(lambda: not any(r.reader.in_section for r in self.vcpu_readers.values()),
                          "vCPUs to leave their read sections")

    def destroy_vm(self) -> None:
        """The last reference dropped: models kvm_destroy_vm(): free the buses, then (per variant)
        srcu_barrier(&kvm->srcu), then cleanup_srcu_struct(&kvm->srcu), whose warnings are checked."""
        self._alive()
        self.stop_vcpus()
        self.sim.spend(self.costs.destroy_vm)
        for bus_idx in KvmBus:  # kvm_io_bus_destroy(): the current buses are freed directly
            self.kfree_bus(self.buses[bus_idx])
        if self.variant.teardown_barrier:
            srcutree.srcu_barrier(self.srcu)
        pending = len(self.srcu.srcu_cblist)
        srcutree.cleanup_srcu_struct(self.srcu)
        self.checker.check(pending == 0, ViolationKind.TEARDOWN_WITHOUT_BARRIER, self.sim.now,
                           f"cleanup_srcu_struct() with {pending} SRCU callback(s) queued: the kernel WARNs "
                           "and leaks kvm->srcu (srcu_barrier() missing)", pending=pending)
        self.destroyed = True

    def _alive(self) -> None:
        if self.destroyed:
            raise KvmIoctlError(errno.EBADF, "the VM has been destroyed")

    # --- queries (for the VMM's shadow) ------------------------------------------------------------
    def bus_version(self, bus_idx: KvmBus) -> int:
        """The version of the bus currently published."""
        return self.buses[bus_idx].version

    def claimant(self, bus_idx: KvmBus, addr: int, length: int, value: int = 0,
                 is_write: bool = True) -> KvmIoDevice | None:
        """Which in-kernel device would take this access on the current bus (None: it exits)."""
        return claimant(self.buses[bus_idx], addr, length, value, is_write)

    def settle(self, limit_ns: int = 1_000_000_000) -> None:
        """Let background work (grace periods, callbacks, vCPU readers) run for up to ``limit_ns``."""
        self.sim.run_until(self.sim.now + limit_ns)
