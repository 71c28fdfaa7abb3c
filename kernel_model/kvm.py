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
from typing import NamedTuple

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
#: The x86 and arm64 (4K) page size: memslot bases and sizes are multiples of it.
PAGE_SIZE = 4096
#: include/linux/kvm_host.h: KVM_USER_MEM_SLOTS = KVM_MEM_SLOTS_NUM (SHRT_MAX) - KVM_INTERNAL_MEM_SLOTS
#: (3 on x86, 0 on arm64).
USER_MEM_SLOTS = {"vmx": 32764, "svm": 32764, "pvm": 32764, "arm64": 32767}
#: include/uapi/linux/kvm.h memslot flags.
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
#: include/uapi/linux/kvm.h; the one capability whose KVM_ENABLE_CAP the model models.
KVM_CAP_SPLIT_IRQCHIP = 121
#: arch/x86/kvm/ioapic.h: KVM_CAP_SPLIT_IRQCHIP's args[0] (reserved IOAPIC pins) may not exceed this.
MAX_NR_RESERVED_IOAPIC_PINS = 48
#: include/linux/kvm_host.h: the most GSI routes KVM_SET_GSI_ROUTING takes.
KVM_MAX_IRQ_ROUTES = 4096
#: arch/x86/kvm/i8254.h: the PIT's ports, and the speaker port KVM_PIT_SPEAKER_DUMMY adds.
KVM_PIT_BASE_ADDRESS = 0x40
KVM_PIT_MEM_LENGTH = 4
KVM_SPEAKER_BASE_ADDRESS = 0x61
#: arm64 vGICv3 frames (QEMU virt's bases; sizes from arch/arm64/include/uapi/asm/kvm.h:
#: KVM_VGIC_V3_DIST_SIZE, KVM_VGIC_V3_REDIST_SIZE = RD_base + SGI_base frames).
ARM64_VGIC_DIST_BASE = 0x08000000
ARM64_VGIC_DIST_SIZE = 0x10000
ARM64_VGIC_REDIST_BASE = 0x080A0000
ARM64_VGIC_REDIST_SIZE = 0x20000
#: vgic_init()'s default SPI count when userspace set none (VGIC_NR_IRQS_LEGACY - VGIC_NR_PRIVATE_IRQS).
ARM64_VGIC_DEFAULT_SPIS = 224
#: arch/x86/kvm/irq_comm.c default_routing[]: GSIs 0-15 on the PIC and the IOAPIC, 16-23 on the IOAPIC.
X86_DEFAULT_IRQ_ROUTES = 40


class KvmIoctlError(OSError):
    """A modelled ioctl failed with ``errno`` (as the real one would)."""


class Memslot(NamedTuple):
    """A memslot: guest-physical base and size, and its KVM_MEM_* flags."""

    base: int
    size: int
    flags: int = 0


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
        self.srcu.work.timer.may_slip = True  # the timer traced slipping a tick (sim.Timer._slips)
        self.memslot_swaps = 0
        self.apicv_inhibits: set[str] = set()
        #: The arm64 vGICv3: its bases (None until KVM_DEV_ARM_VGIC_GRP_ADDR sets them), how many
        #: redistributors are registered, CTRL_INIT done, distributor registered (vgic_ready()).
        self.vgic_dist_base: int | None = None
        self.vgic_redist_base: int | None = None
        self.vgic_redists = 0
        self.vgic_initialized = False
        self.vgic_ready = False
        self.srcu.on_callback_after_cleanup = self._callback_after_cleanup
        self.buses: dict[KvmBus, KvmIoBus] = {b: KvmIoBus(b, 0) for b in KvmBus}
        self._next_version = {b: 1 for b in KvmBus}
        #: The newest bus version published by a registration that has *returned* to userspace.
        self.returned_version: dict[KvmBus, int] = {b: 0 for b in KvmBus}
        self._holders: dict[int, int] = {}
        self.created_vcpus = 0
        self.apic_access_page_done = False
        self.irqchip = False
        #: By (address space, slot id), as kvm->memslots[as_id] holds them.
        self.memslots: dict[tuple[int, int], Memslot] = {}
        #: kvm->irq_srcu: protects the GSI routing table (virt/kvm/irqchip.c), apart from kvm->srcu.
        self.irq_srcu = srcutree.SrcuStruct(sim, "kvm->irq_srcu", nr_cpu_ids=nr_cpu_ids)
        #: KVM_CAP_SPLIT_IRQCHIP enabled: the local APICs are in the kernel, the PIC and IOAPIC are not.
        self.irqchip_split = False
        self.pit = False
        #: GSIs with an irqfd, one entry per KVM_IRQFD assign still in place.
        self.irqfds: list[int] = []
        self.irq_routes = 0
        self.ioeventfds: list[Ioeventfd] = []
        self.vcpu_readers: dict[int, VcpuReaders] = {}
        self.vcpu_ids: set[int] = set()
        self.destroyed = False
        self.buses_freed = 0
        self.registrations = 0

    def issuing(self, caller: object) -> None:
        """Tag the SRCU requests and waits that follow with ``caller`` (a sequence step's index), so
        that each grace period can say which step asked for it and each wait which step blocked."""
        self.srcu.caller = caller
        self.irq_srcu.caller = caller

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

    def kvm_vgic_addr(self, addr_type: str, addr: int) -> None:
        """arm64 KVM_SET_DEVICE_ATTR(KVM_DEV_ARM_VGIC_GRP_ADDR) on a vGICv3, models kvm_vgic_addr()
        (arch/arm64/kvm/vgic/vgic-kvm-device.c) and vgic_v3_set_redist_base() (vgic-mmio-v3.c, v6.x).
        ``"dist"`` (KVM_VGIC_V3_ADDR_TYPE_DIST) only records the distributor's base: the distributor is
        registered at the first KVM_RUN (``kvm_vgic_map_resources``). ``"redist"``
        (KVM_VGIC_V3_ADDR_TYPE_REDIST) records the redistributor region and then registers the
        redistributor of every vCPU that already exists (vgic_register_all_redist_iodevs()): one
        kvm_io_bus_register_dev() of KVM_VGIC_V3_REDIST_SIZE each, freed by the variant's rule. A vCPU
        created later registers its own (``create_vcpu``). EEXIST when a base is set twice.
        Simplified: one legacy redistributor region (no KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION); no
        alignment or overlap checks."""
        self._arm64_vgic_only("KVM_DEV_ARM_VGIC_GRP_ADDR")
        if addr_type not in ("dist", "redist"):
            raise ValueError(f"vGIC address type {addr_type!r}: dist or redist")
        current = self.vgic_dist_base if addr_type == "dist" else self.vgic_redist_base
        if current is not None:
            raise KvmIoctlError(errno.EEXIST, f"KVM_VGIC_V3_ADDR_TYPE_{addr_type.upper()}: already set")
        if addr_type == "dist":
            self.vgic_dist_base = addr
            return
        self.vgic_redist_base = addr
        for _ in range(self.created_vcpus):
            self._vgic_register_redist_iodev()
        self._registrations_returned()

    def _vgic_register_redist_iodev(self) -> None:
        """vgic_register_redist_iodev() (vgic-mmio-v3.c): the next free redistributor of the region,
        one range covering its RD_base and SGI_base frames. Nothing before the region is set."""
        if self.vgic_redist_base is None:
            return  # "we will come back to this function for all VCPUs when the base address is set"
        index = self.vgic_redists
        self.kvm_io_bus_register_dev(KvmBus.KVM_MMIO_BUS, self.vgic_redist_base + index * ARM64_VGIC_REDIST_SIZE,
                                     ARM64_VGIC_REDIST_SIZE, InKernelDevice(f"vgic-redist{index}"))
        self.vgic_redists += 1

    def kvm_vgic_ctrl_init(self) -> None:
        """arm64 KVM_SET_DEVICE_ATTR(KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT) on a vGICv3,
        models vgic_init() (arch/arm64/kvm/vgic/vgic-init.c, v6.x): it sizes the distributor's SPIs and
        installs the default GSI routing (kvm_vgic_setup_default_irq_routing()), and registers nothing
        on a bus: the redistributors register when both they and their region exist, the distributor
        at the first KVM_RUN. A second call does nothing."""
        self._arm64_vgic_only("KVM_DEV_ARM_VGIC_CTRL_INIT")
        if self.vgic_initialized:
            return
        self.kvm_set_irq_routing(ARM64_VGIC_DEFAULT_SPIS)
        self.vgic_initialized = True

    def kvm_vgic_map_resources(self) -> None:
        """Models kvm_vgic_map_resources() (arch/arm64/kvm/vgic/vgic-init.c, v6.x), which the first
        KVM_RUN of any vCPU calls (kvm_arch_vcpu_run_pid_change()): for a vGICv3 ENXIO until both bases
        are set, EBUSY until KVM_DEV_ARM_VGIC_CTRL_INIT, then the distributor is registered on the MMIO
        bus (vgic_register_dist_iodev(), KVM_VGIC_V3_DIST_SIZE), freed by the variant's rule. Once
        ready, later calls do nothing."""
        if self.vgic_ready or not self.irqchip:
            return
        if self.vgic_dist_base is None or self.vgic_redist_base is None:
            raise KvmIoctlError(errno.ENXIO, "KVM_RUN: the vGIC's distributor and redistributor bases are not set")
        if not self.vgic_initialized:
            raise KvmIoctlError(errno.EBUSY, "KVM_RUN: the vGICv3 was not initialized (KVM_DEV_ARM_VGIC_CTRL_INIT)")
        self.vgic_ready = True
        self.kvm_io_bus_register_dev(KvmBus.KVM_MMIO_BUS, self.vgic_dist_base, ARM64_VGIC_DIST_SIZE,
                                     InKernelDevice("vgic-dist"))
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
        if self.lapic_in_kernel:
            raise KvmIoctlError(errno.EEXIST, "KVM_CREATE_IRQCHIP: irqchip already exists")
        if self.platform.irqchip_before_vcpus and self.created_vcpus:
            raise KvmIoctlError(errno.EINVAL, "KVM_CREATE_IRQCHIP: vCPUs already exist")
        self.sim.spend(self.costs.create_irqchip)
        for bus_idx, addr, length, name in self.platform.irqchip_devices:
            self.kvm_io_bus_register_dev(bus_idx, addr, length, InKernelDevice(name))
        if self.platform.irqchip_before_vcpus:
            # x86 kvm_arch_vm_ioctl(KVM_CREATE_IRQCHIP) ends with kvm_setup_default_irq_routing(): the
            # default table (16 GSIs on both PIC and IOAPIC, 8 on the IOAPIC only) and an expedited
            # grace period of kvm->irq_srcu, milliseconds on a busy host.
            self.kvm_set_irq_routing(X86_DEFAULT_IRQ_ROUTES)
        self.irqchip = True
        self._registrations_returned()

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

    def set_user_memory_region(self, slot: int, base: int, size: int, flags: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION (and ..._REGION2), models kvm_set_memory_region() and
        kvm_set_memslot(): create = one memslot swap; delete and move = two (invalidate, then commit); a
        change of KVM_MEM_LOG_DIRTY_PAGES alone = one (KVM_MR_FLAGS_ONLY); an unchanged region returns
        early with none. ``slot`` carries the address space in its high 16 bits. EINVAL for a base or
        size that is not a page multiple, a slot or address space out of range, a delete of nothing, a
        size change or a KVM_MEM_READONLY change; EEXIST for a range that overlaps another memslot of
        the same address space. Simplified: the userspace address (KVM requires it unchanged on a move)
        is the host's business; the arch memslot work is in the fixed cost."""
        self._alive()
        as_id, slot_id = slot >> 16, slot & 0xFFFF
        name = f"KVM_SET_USER_MEMORY_REGION: slot {slot_id}" + (f" of address space {as_id}" if as_id else "")
        if base % PAGE_SIZE or size % PAGE_SIZE:
            raise KvmIoctlError(errno.EINVAL, f"{name}: base and size must be multiples of the page size "
                                f"({PAGE_SIZE})")
        if as_id >= self.platform.memslot_address_spaces:
            raise KvmIoctlError(errno.EINVAL, f"{name}: {self.platform.name} has no address space {as_id}")
        if slot_id >= USER_MEM_SLOTS.get(self.platform.name, 32764):
            raise KvmIoctlError(errno.EINVAL, f"{name}: slot ids go up to "
                                f"{USER_MEM_SLOTS.get(self.platform.name, 32764) - 1}")
        if flags & ~(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY):
            raise KvmIoctlError(errno.EINVAL, f"{name}: flags {flags:#x} not modelled")
        self.sim.spend(self.costs.set_user_memory_region)
        key = (as_id, slot_id)
        old = self.memslots.get(key)
        if size and (old is None or old.base != base):
            for (other_as, other_id), other in self.memslots.items():
                if (other_as, other_id) != key and other_as == as_id and \
                        base < other.base + other.size and other.base < base + size:
                    raise KvmIoctlError(errno.EEXIST, f"{name} at {base:#x} overlaps slot {other_id} at "
                                        f"{other.base:#x}")
        if size == 0:
            if old is None:
                raise KvmIoctlError(errno.EINVAL, f"{name} does not exist")
            del self.memslots[key]
            swaps = 2
        elif old is None:
            self.memslots[key] = Memslot(base, size, flags)
            swaps = 1
        elif old.size != size:
            raise KvmIoctlError(errno.EINVAL, f"{name} cannot change size")
        elif (old.flags ^ flags) & KVM_MEM_READONLY:
            raise KvmIoctlError(errno.EINVAL, f"{name} cannot change KVM_MEM_READONLY")
        elif old.base != base:
            self.memslots[key] = Memslot(base, size, flags)
            swaps = 2
        elif old.flags != flags:
            self.memslots[key] = Memslot(base, size, flags)
            swaps = 1
        else:
            swaps = 0
        for _ in range(swaps):
            self.kvm_swap_active_memslots()

    @property
    def lapic_in_kernel(self) -> bool:
        """irqchip_in_kernel() on x86: KVM_CREATE_IRQCHIP or KVM_CAP_SPLIT_IRQCHIP."""
        return self.irqchip or self.irqchip_split

    def _x86_only(self, what: str) -> None:
        if self.platform.name == "arm64":
            raise KvmIoctlError(errno.ENOTTY, f"{what}: x86 only")

    def _arm64_vgic_only(self, what: str) -> None:
        """A vGIC device attribute: ENODEV unless this is an arm64 VM whose vGIC exists."""
        self._alive()
        if self.platform.name != "arm64" or not self.irqchip:
            raise KvmIoctlError(errno.ENODEV, f"{what}: no vGIC on this VM")

    def register_coalesced_mmio(self, addr: int, size: int, pio: bool = False) -> None:
        """KVM_REGISTER_COALESCED_MMIO, models kvm_vm_ioctl_register_coalesced_mmio()
        (virt/kvm/coalesced_mmio.c, v6.18): one device per zone, registered under slots_lock with
        kvm_io_bus_register_dev() on KVM_PIO_BUS (``pio``) or KVM_MMIO_BUS, the old bus freed by the
        variant's rule. So under call_srcu it starts a normal grace period like any other registration:
        QEMU issues it just before its read-only BIOS memslot, which then waits for that grace period.
        Simplified: the ring page and the zone's own checks are in the fixed cost."""
        self._alive()
        self.sim.spend(self.costs.register_coalesced_mmio)
        bus = KvmBus.KVM_PIO_BUS if pio else KvmBus.KVM_MMIO_BUS
        self.kvm_io_bus_register_dev(bus, addr, size, InKernelDevice("coalesced-mmio"))
        self._registrations_returned()

    def create_pit2(self, speaker_dummy: bool = False) -> None:
        """KVM_CREATE_PIT2, models kvm_arch_vm_ioctl()'s create_pit and kvm_create_pit()
        (arch/x86/kvm/i8254.c, v6.18): EEXIST for a second PIT, ENOENT without the in-kernel PIC; then
        the PIT's ports 0x40-0x43 are registered on KVM_PIO_BUS, and with KVM_PIT_SPEAKER_DUMMY the
        speaker port 0x61 too: each a kvm_io_bus_register_dev(), freed by the variant's rule. The PIT
        starts in reinject mode: kvm_pit_set_reinject() sets the APICV_INHIBIT_REASON_PIT_REINJ inhibit
        (which on SVM with AVIC keeps the first vCPU from installing the APIC-access page).
        Simplified: the PIT's kthread worker, irq source id and ack/mask notifiers are in the fixed cost."""
        self._alive()
        self._x86_only("KVM_CREATE_PIT2")
        if self.pit:
            raise KvmIoctlError(errno.EEXIST, "KVM_CREATE_PIT2: the PIT already exists")
        if not self.irqchip:
            raise KvmIoctlError(errno.ENOENT, "KVM_CREATE_PIT2: needs the in-kernel PIC (KVM_CREATE_IRQCHIP)")
        self.sim.spend(self.costs.create_pit2)
        self.kvm_set_apicv_inhibit("pit-reinject")
        self.kvm_io_bus_register_dev(KvmBus.KVM_PIO_BUS, KVM_PIT_BASE_ADDRESS, KVM_PIT_MEM_LENGTH,
                                     InKernelDevice("pit"))
        if speaker_dummy:
            self.kvm_io_bus_register_dev(KvmBus.KVM_PIO_BUS, KVM_SPEAKER_BASE_ADDRESS, 4,
                                         InKernelDevice("pit-speaker"))
        self.pit = True
        self._registrations_returned()

    def irqfd(self, gsi: int, deassign: bool = False) -> None:
        """KVM_IRQFD, models kvm_irqfd_assign() / kvm_irqfd_deassign() (virt/kvm/eventfd.c, v6.18). The
        assign reads the routing under srcu_read_lock(&kvm->irq_srcu) and waits for no grace period;
        EINVAL without an in-kernel irqchip. The deassign of a live irqfd queues its shutdown on
        irqfd_cleanup_wq and flushes it (one workqueue hop); a deassign that matches nothing returns 0,
        as the kernel's does. Simplified: resamplefd (KVM_IRQFD_FLAG_RESAMPLE) and irq bypass."""
        self._alive()
        if not deassign:
            if not self.lapic_in_kernel:
                raise KvmIoctlError(errno.EINVAL, "KVM_IRQFD: needs an in-kernel irqchip")
            self.sim.spend(self.costs.irqfd)
            self.irqfds.append(gsi)
            return
        self.sim.spend(self.costs.irqfd)
        if gsi in self.irqfds:
            self.irqfds.remove(gsi)
            self.sim.spend(self.costs.workqueue_hop)  # flush_workqueue(irqfd_cleanup_wq)

    def kvm_set_irq_routing(self, nr: int) -> None:
        """Models kvm_set_irq_routing() (virt/kvm/irqchip.c, v6.18): build the new table, publish it
        under kvm->irq_lock, then ``synchronize_srcu_expedited(&kvm->irq_srcu)`` before freeing the old
        one. kvm->irq_srcu is not kvm->srcu: a grace period pending on kvm->srcu does not delay it."""
        if nr > KVM_MAX_IRQ_ROUTES:
            raise KvmIoctlError(errno.EINVAL, f"KVM_SET_GSI_ROUTING: more than {KVM_MAX_IRQ_ROUTES} routes")
        self.sim.spend(self.costs.set_gsi_routing)
        self.irq_routes = nr
        srcutree.synchronize_srcu_expedited(self.irq_srcu)

    def set_gsi_routing(self, nr: int) -> None:
        """KVM_SET_GSI_ROUTING with ``nr`` entries: EINVAL without an in-kernel irqchip
        (kvm_arch_can_set_irq_routing()), else kvm_set_irq_routing()."""
        self._alive()
        if not self.lapic_in_kernel:
            raise KvmIoctlError(errno.EINVAL, "KVM_SET_GSI_ROUTING: needs an in-kernel irqchip")
        self.kvm_set_irq_routing(nr)

    def enable_cap(self, cap: int, arg0: int = 0) -> None:
        """KVM_ENABLE_CAP on the VM. Modelled: KVM_CAP_SPLIT_IRQCHIP (kvm_vm_ioctl_enable_cap(), x86.c
        v6.18): EINVAL for more than MAX_NR_RESERVED_IOAPIC_PINS pins, EEXIST once an irqchip or a vCPU
        exists, then kvm_setup_empty_irq_routing() (an empty kvm_set_irq_routing(): one expedited grace
        period of kvm->irq_srcu) and the local APICs are in the kernel (so on VMX the first vCPU
        installs the APIC-access page). Any other capability is its fixed cost only."""
        self._alive()
        self.sim.spend(self.costs.enable_cap)
        if cap != KVM_CAP_SPLIT_IRQCHIP:
            return
        self._x86_only("KVM_CAP_SPLIT_IRQCHIP")
        if arg0 > MAX_NR_RESERVED_IOAPIC_PINS:
            raise KvmIoctlError(errno.EINVAL, f"KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP): more than "
                                f"{MAX_NR_RESERVED_IOAPIC_PINS} reserved IOAPIC pins")
        if self.lapic_in_kernel or self.created_vcpus:
            raise KvmIoctlError(errno.EEXIST, "KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP): an irqchip or a vCPU "
                                "already exists")
        self.kvm_set_irq_routing(0)
        self.irqchip_split = True

    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR, models kvm_vm_ioctl_set_tss_addr() -> vmx_set_tss_addr() (v6.18), which
        returns 0 at once when unrestricted guest is enabled (as on SVM and PVM). Simplified: VMX without
        unrestricted guest, where it installs a private TSS memslot (one memslot swap), is not modelled."""
        self._alive()
        self._x86_only("KVM_SET_TSS_ADDR")
        self.sim.spend(self.costs.set_tss_addr)

    def unmodelled_ioctl(self, cost_ns: int) -> None:
        """An ioctl the model does not model: its measured duration, as a fixed cost, and nothing else."""
        self._alive()
        self.sim.spend(cost_ns)

    def create_vcpu(self, vcpu_id: int) -> None:
        """KVM_CREATE_VCPU: ``created_vcpus`` goes up first; on VMX (and SVM with AVIC) with an in-kernel
        LAPIC the first vCPU allocates the APIC-access page through a private memslot: one memslot swap
        per memslot address space (arch/x86/kvm/x86.c __x86_set_memory_region(), two with SMM).
        On SVM an APICv inhibit present at that moment (an in-kernel PIT in reinject mode) skips it.
        EEXIST for an id already in use.

        On x86 without an in-kernel LAPIC, kvm_create_lapic() (arch/x86/kvm/lapic.c, 6.18) does
        static_branch_inc(&kvm_has_noapic_vcpu): the first such vCPU on the host takes the key from
        0 to 1, which patches the kernel's code (Costs.static_key_enable); later ones only count.
        The key is global: the model assumes no other VM on the host holds an LAPIC-less vCPU, as in
        the runs of minivmm timing (each VM is closed, and the key dropped, before the next)."""
        self._alive()
        if vcpu_id in self.vcpu_ids:
            raise KvmIoctlError(errno.EEXIST, f"KVM_CREATE_VCPU: vCPU {vcpu_id} already exists")
        self.vcpu_ids.add(vcpu_id)
        self.created_vcpus += 1
        first = self.created_vcpus == 1
        self.sim.spend(self.costs.create_vcpu)
        if first and self.platform.name != "arm64" and not self.lapic_in_kernel:
            self.sim.spend(self.costs.static_key_enable)
        if (self.platform.apic_access_memslot_on_first_vcpu and self.lapic_in_kernel
                and not self.apic_access_page_done
                and not self.apicv_inhibits & self.platform.apicv_inhibits_apic_access_page):
            # kvm_alloc_apic_access_page() -> __x86_set_memory_region(): the private slot is created in
            # every memslot address space (two when the VM supports SMM), one swap each.
            for as_id in range(self.platform.memslot_address_spaces):
                self.memslots[(as_id, APIC_ACCESS_PAGE_PRIVATE_MEMSLOT)] = Memslot(APIC_DEFAULT_PHYS_BASE, 4096)
                self.kvm_swap_active_memslots()
            self.apic_access_page_done = True
        if self.platform.name == "arm64" and self.irqchip:
            # kvm_arch_vcpu_create() -> kvm_vgic_vcpu_init() -> vgic_register_redist_iodev()
            self._vgic_register_redist_iodev()
            self._registrations_returned()

    def run_vcpu(self, vcpu_id: int, section_ns: int, period_ns: int, offset_ns: int = 0) -> VcpuReaders:
        """The first KVM_RUN of a vCPU: from now on it handles exits inside SRCU read sections. EBADF
        for a vCPU that was never created (there is no fd to issue it on). A second first entry of the same
        vCPU is not modelled (the kernel would block it on vcpu->mutex) and is refused."""
        self._alive()
        if vcpu_id not in self.vcpu_ids:
            raise KvmIoctlError(errno.EBADF, f"KVM_RUN: vCPU {vcpu_id} has not been created")
        if vcpu_id in self.vcpu_readers:
            raise ValueError(f"vCPU {vcpu_id} already runs: a sequence starts each vCPU once")
        if self.platform.name == "arm64":
            self.kvm_vgic_map_resources()  # kvm_arch_vcpu_run_pid_change(), on the first KVM_RUN
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
    def memory_covers(self, addr: int, length: int) -> bool:
        """Whether one memslot holds the guest-physical range [addr, addr + length)."""
        return any(as_id == 0 and m.base <= addr and addr + length <= m.base + m.size
                   for (as_id, _), m in self.memslots.items())

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
