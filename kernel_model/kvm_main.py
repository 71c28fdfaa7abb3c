"""A VM as kvm_main.c sees it: struct kvm with its buses, memslots, vCPUs and kvm->srcu; the VM ioctls
(``kvm_vm_ioctl()``), each handing over to the file that does the work in the kernel; SRCU readers (vCPUs
handling exits); teardown; and the invariant checks.

Modelled on virt/kvm/kvm_main.c, v6.18 (kvm_create_vm, kvm_vm_ioctl, kvm_vm_ioctl_create_vcpu,
kvm_set_memory_region and kvm_set_memslot, kvm_swap_active_memslots, kvm_io_bus_register_dev /
_unregister_dev, kvm_destroy_vm). The rest lives where the kernel has it: :mod:`kernel_model.eventfd`
(ioeventfds, irqfds), :mod:`kernel_model.coalesced_mmio`, :mod:`kernel_model.irqchip` (GSI routing) and
:mod:`kernel_model.arch` (the irqchips, the PIT, the APIC-access page, the vGIC), chosen by
``Platform.arch``.

Simplified: irq routing, dirty logging, mmu notifiers and the arch memslot work are left out; an ioctl's
own work is one fixed cost (``Costs``) plus whatever SRCU waits it does.
"""

from __future__ import annotations

import errno

from kernel_model import coalesced_mmio, eventfd, irqchip, srcutree
from kernel_model.arch.x86 import X86
from kernel_model.costs import Costs
from kernel_model.invariants import InvariantChecker, ViolationKind
from kernel_model.kvm_host import (
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    PAGE_SIZE,
    KvmArch,
    KvmIoctlError,
    Memslot,
    x86_only,
)
from kernel_model.kvm_io_bus import (
    NR_IOBUS_DEVS,
    Ioeventfd,
    KvmBus,
    KvmIoBus,
    KvmIoDevice,
    KvmIoRange,
    __kvm_io_bus_read,
    __kvm_io_bus_write,
    claimant,
    insert_range,
    remove_range,
)
from kernel_model.platforms import Arch, Platform
from kernel_model.sim import Sim
from kernel_model.variants import Variant

# Module-level aliases: inside a class body Python would mangle the kernel's double-underscore names.
_kvm_io_bus_write = __kvm_io_bus_write
_kvm_io_bus_read = __kvm_io_bus_read


def arch_of(kvm: KvmModel) -> KvmArch:
    """The VM's struct kvm_arch and hooks, for its platform's architecture. arm64's module is imported
    only for an arm64 VM: an x86 host's ``minivmm boot`` does not pay for it."""
    if kvm.platform.arch is Arch.ARM64:
        from kernel_model.arch.arm64 import Arm64
        return Arm64(kvm)
    return X86(kvm)

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
    exit handled in the kernel, with an MMIO bus lookup), from ``offset_ns`` on, until stopped.

    Its sections are not events: where the vCPU is at any moment follows from its period, so the VM
    brings it up to date (:meth:`catch_up`) just before anything looks at SRCU's readers (a scan, an
    index flip) or at who holds a bus (a publish, a kfree()). A section that begins and ends between
    two such looks touches nothing anyone sees, and a running vCPU costs nothing while nobody looks.
    Looks come in time order but for one case: a work item's own clock can run ahead of an event on
    another CPU that comes after it; that later look sees the vCPU as of the earlier, later-timed one
    (microseconds at most)."""

    def __init__(self, kvm: KvmModel, vcpu_id: int, section_ns: int, period_ns: int, offset_ns: int = 0) -> None:
        if not 0 < section_ns < period_ns:
            raise ValueError("a vCPU's read section must be shorter than its period")
        self.kvm = kvm
        self.reader = Reader(kvm, f"vcpu{vcpu_id}")
        self.section_ns = section_ns
        self.period_ns = period_ns
        self.start = kvm.sim.now + offset_ns
        #: The section (its number from 0) the reader is in as of the last catch-up, or None.
        self.section: int | None = None
        self.stopped_at: int | None = None
        self._seen = kvm.sim.now

    @property
    def running(self) -> bool:
        """Whether the vCPU is still in KVM_RUN (stop() not called)."""
        return self.stopped_at is None

    def section_at(self, t: int) -> int | None:
        """The number of the section the vCPU is in at ``t`` (none begins once it was stopped)."""
        if t < self.start:
            return None
        k, into = divmod(t - self.start, self.period_ns)
        if self.stopped_at is not None and self.start + k * self.period_ns >= self.stopped_at:
            return None
        return k if into < self.section_ns else None

    def sections_begun(self) -> int:
        """How many read sections the vCPU has begun so far."""
        t = self._seen if self.stopped_at is None else min(self._seen, self.stopped_at - 1)
        return 0 if t < self.start else (t - self.start) // self.period_ns + 1

    def catch_up(self) -> None:
        """srcu_read_unlock() of a section that has ended, srcu_read_lock() (and the bus lookup) of one
        that has begun since the last look."""
        t = self.kvm.sim.now
        if t < self._seen:
            return
        self._seen = t
        k = self.section_at(t)
        if self.section is not None and k != self.section:
            self.reader.end()
            self.section = None
        if k is not None and self.section is None:
            self.reader.begin()
            self.reader.get_bus(KvmBus.KVM_MMIO_BUS)
            self.section = k

    def section_end(self) -> int | None:
        """When the section the vCPU is in (as of the last look) ends."""
        return None if self.section is None else self.start + self.section * self.period_ns + self.section_ns

    def stop(self) -> None:
        """The vCPU leaves KVM_RUN for good (after its current section, if any)."""
        self.catch_up()
        self.stopped_at = self.kvm.sim.now


class KvmModel:
    """One VM (``kvm_create_vm()``): buses, memslots, vCPUs and kvm->srcu, under a variant and platform."""

    def __init__(self, sim: Sim, variant: Variant, platform: Platform,
                 checker: InvariantChecker | None = None, nr_cpu_ids: int | None = None,
                 mmu_notifier_srcu: srcutree.SrcuStruct | None = None) -> None:
        self.sim = sim
        self.costs: Costs = sim.costs
        if nr_cpu_ids is None:
            nr_cpu_ids = sim.costs.cpus.nr_cpus
        #: mm/mmu_notifier.c's ``srcu``: one srcu_struct for the whole host, which every VM's teardown
        #: synchronizes (mmu_notifier_unregister()). Shared between VMs that run at once (a churn of
        #: VMs on several threads); by default this VM's own, idle as when no other VM comes and goes.
        self.mmu_notifier_srcu = mmu_notifier_srcu or srcutree.SrcuStruct(sim, "mmu_notifier srcu",
                                                                         nr_cpu_ids=nr_cpu_ids)
        self.variant = variant
        self.platform = platform
        self.checker = checker or InvariantChecker()
        self.srcu = srcutree.SrcuStruct(sim, nr_cpu_ids=nr_cpu_ids)
        self.srcu.look_at_readers = self.catch_up_readers
        self.memslot_swaps = 0
        self.srcu.on_callback_after_cleanup = self._callback_after_cleanup
        self.buses: dict[KvmBus, KvmIoBus] = {b: KvmIoBus(b, 0) for b in KvmBus}
        self._next_version = {b: 1 for b in KvmBus}
        #: The newest bus version published by a registration that has *returned* to userspace.
        self.returned_version: dict[KvmBus, int] = {b: 0 for b in KvmBus}
        self._holders: dict[int, int] = {}
        self.created_vcpus = 0
        #: By (address space, slot id), as kvm->memslots[as_id] holds them.
        self.memslots: dict[tuple[int, int], Memslot] = {}
        #: kvm->irq_srcu: protects the GSI routing table (virt/kvm/irqchip.c), apart from kvm->srcu.
        self.irq_srcu = srcutree.SrcuStruct(sim, "kvm->irq_srcu", nr_cpu_ids=nr_cpu_ids)
        #: GSIs with an irqfd, one entry per KVM_IRQFD assign still in place.
        self.irqfds: list[int] = []
        self.irq_routes = 0
        #: The assigned ioeventfds, by (PIO?, address): only ioeventfds at the same address of the same
        #: bus can collide (ioeventfd_check_collision()), so the kernel's walk of kvm->ioeventfds is a
        #: look-up here.
        self.ioeventfds: dict[tuple[bool, int], list[Ioeventfd]] = {}
        self.vcpu_readers: dict[int, VcpuReaders] = {}
        self.vcpu_ids: set[int] = set()
        self.destroyed = False
        self.buses_freed = 0
        self.registrations = 0
        #: struct kvm_arch and the architecture's hooks (Platform.arch).
        self.arch: KvmArch = arch_of(self)

    def issuing(self, caller: object) -> None:
        """Tag the SRCU requests and waits that follow with ``caller`` (a sequence step's index), so
        that each grace period can say which step asked for it and each wait which step blocked."""
        self.srcu.caller = caller
        self.irq_srcu.caller = caller

    # --- kernel internals ------------------------------------------------------------------------
    def catch_up_readers(self) -> None:
        """Bring every running vCPU's read sections up to now (see VcpuReaders)."""
        for r in self.vcpu_readers.values():
            r.catch_up()

    def kfree_bus(self, bus: KvmIoBus) -> None:
        """kfree() of a bus, checked: no reader that obtained it may still be in its read section."""
        self.catch_up_readers()
        holders = self._holders.get(id(bus), 0)
        self.checker.check(holders == 0, ViolationKind.USE_AFTER_FREE, self.sim.now,
                           lambda: f"{bus.bus_idx.name} v{bus.version} freed while {holders} reader(s) that "
                           "obtained it are still in their read sections", bus=bus.bus_idx.name, version=bus.version)
        bus.freed = True
        bus.freed_at = self.sim.now
        self.buses_freed += 1

    def _publish(self, bus_idx: KvmBus, new: KvmIoBus) -> KvmIoBus:
        """rcu_assign_pointer(kvm->buses[bus_idx], new); returns the old bus."""
        self.catch_up_readers()  # a section begun before this obtained the old bus
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
        synchronize_srcu_expedited() before kfree() of the old bus. The model's callers only pass a
        device that is on the bus (the kernel returns at once for one that is not)."""
        bus = self.buses[bus_idx]
        version = self._next_version[bus_idx]
        new = remove_range(bus, dev, version)
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

    def registrations_returned(self) -> None:
        """An ioctl that registered or unregistered devices returns to userspace: every read section
        that begins from now on must see the buses it published (the ``stale-bus`` rule)."""
        self.returned_version = {b: self.buses[b].version for b in KvmBus}

    def _callback_after_cleanup(self, cb: srcutree.SrcuCallback) -> None:
        self.checker.check(False, ViolationKind.CALLBACK_AFTER_CLEANUP, self.sim.now,
                           f"SRCU callback {cb.name} ran after cleanup_srcu_struct(&kvm->srcu)", callback=cb.name)

    def _x86(self, what: str) -> X86:
        """The VM's x86 struct kvm_arch, for an x86-only ioctl; ENOTTY on another architecture."""
        if not isinstance(self.arch, X86):
            raise x86_only(what)
        return self.arch

    # --- ioctls (kvm_vm_ioctl(): each hands over to the file that does the work) --------------------
    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: the architecture's (``KvmArch.create_irqchip``)."""
        self.alive()
        self.arch.create_irqchip()
        self.registrations_returned()

    def ioeventfd(self, addr: int, length: int, datamatch: int | None = None, pio: bool = False) -> Ioeventfd:
        """KVM_IOEVENTFD (assign): :func:`kernel_model.eventfd.kvm_assign_ioeventfd`."""
        self.alive()
        p = eventfd.kvm_assign_ioeventfd(self, addr, length, datamatch, pio)
        self.registrations_returned()
        return p

    def ioeventfd_deassign(self, addr: int, length: int, datamatch: int | None = None, pio: bool = False) -> None:
        """KVM_IOEVENTFD with DEASSIGN: :func:`kernel_model.eventfd.kvm_deassign_ioeventfd`."""
        self.alive()
        eventfd.kvm_deassign_ioeventfd(self, addr, length, datamatch, pio)
        self.registrations_returned()

    def irqfd(self, gsi: int, deassign: bool = False) -> None:
        """KVM_IRQFD: :func:`kernel_model.eventfd.kvm_irqfd_assign` or ``kvm_irqfd_deassign``."""
        self.alive()
        if deassign:
            eventfd.kvm_irqfd_deassign(self, gsi)
        else:
            eventfd.kvm_irqfd_assign(self, gsi)

    def register_coalesced_mmio(self, addr: int, size: int, pio: bool = False) -> None:
        """KVM_REGISTER_COALESCED_MMIO: :func:`kernel_model.coalesced_mmio.kvm_vm_ioctl_register_coalesced_mmio`."""
        self.alive()
        coalesced_mmio.kvm_vm_ioctl_register_coalesced_mmio(self, addr, size, pio)
        self.registrations_returned()

    def set_gsi_routing(self, nr: int) -> None:
        """KVM_SET_GSI_ROUTING with ``nr`` entries: EINVAL without an in-kernel irqchip
        (kvm_arch_can_set_irq_routing()), else :func:`kernel_model.irqchip.kvm_set_irq_routing`."""
        self.alive()
        if not self.arch.irqchip_in_kernel():
            raise KvmIoctlError(errno.EINVAL, "KVM_SET_GSI_ROUTING: needs an in-kernel irqchip")
        irqchip.kvm_set_irq_routing(self, nr)

    def enable_cap(self, cap: int, arg0: int = 0) -> None:
        """KVM_ENABLE_CAP on the VM: its fixed cost, then the architecture's kvm_vm_ioctl_enable_cap()
        (``KvmArch.kvm_vm_ioctl_enable_cap``: x86 models KVM_CAP_SPLIT_IRQCHIP)."""
        self.alive()
        self.sim.spend(self.costs.enable_cap)
        self.arch.kvm_vm_ioctl_enable_cap(cap, arg0)

    def create_pit2(self, speaker_dummy: bool = False) -> None:
        """KVM_CREATE_PIT2 (x86): :meth:`kernel_model.arch.x86.X86.kvm_create_pit`."""
        self.alive()
        self._x86("KVM_CREATE_PIT2").kvm_create_pit(speaker_dummy)
        self.registrations_returned()

    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR (x86): :meth:`kernel_model.arch.x86.X86.kvm_vm_ioctl_set_tss_addr`."""
        self.alive()
        self._x86("KVM_SET_TSS_ADDR").kvm_vm_ioctl_set_tss_addr(addr)

    def unmodelled_ioctl(self, cost_ns: int) -> None:
        """An ioctl the model does not model: its measured duration, as a fixed cost, and nothing else."""
        self.alive()
        self.sim.spend(cost_ns)

    def set_user_memory_region(self, slot: int, base: int, size: int, flags: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION (and ..._REGION2), models kvm_set_memory_region() and
        kvm_set_memslot(): create = one memslot swap; delete and move = two (invalidate, then commit); a
        change of KVM_MEM_LOG_DIRTY_PAGES alone = one (KVM_MR_FLAGS_ONLY); an unchanged region returns
        early with none. ``slot`` carries the address space in its high 16 bits. EINVAL for a base or
        size that is not a page multiple, a slot or address space out of range, a delete of nothing, a
        size change or a KVM_MEM_READONLY change; EEXIST for a range that overlaps another memslot of
        the same address space. Simplified: the userspace address (KVM requires it unchanged on a move)
        is the host's business; the arch memslot work is in the fixed cost."""
        self.alive()
        as_id, slot_id = slot >> 16, slot & 0xFFFF
        name = f"KVM_SET_USER_MEMORY_REGION: slot {slot_id}" + (f" of address space {as_id}" if as_id else "")
        self._check_memory_region(name, as_id, slot_id, base, size, flags)
        self.sim.spend(self.costs.set_user_memory_region)
        key = (as_id, slot_id)
        old = self.memslots.get(key)
        if size and (old is None or old.base != base):
            self.kvm_check_memslot_overlap(name, key, base, size)
        for _ in range(self._change_memslot(name, key, old, base, size, flags)):
            self.kvm_swap_active_memslots()

    def _check_memory_region(self, name: str, as_id: int, slot_id: int, base: int, size: int, flags: int) -> None:
        """The argument checks at the top of __kvm_set_memory_region() and check_memory_region_flags()
        (virt/kvm/kvm_main.c): page-aligned base and size, an address space and slot id in range, and
        only the flags modelled (KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY); EINVAL otherwise."""
        if base % PAGE_SIZE or size % PAGE_SIZE:
            raise KvmIoctlError(errno.EINVAL, f"{name}: base and size must be multiples of the page size "
                                f"({PAGE_SIZE})")
        if as_id >= self.platform.memslot_address_spaces:
            raise KvmIoctlError(errno.EINVAL, f"{name}: {self.platform.name} has no address space {as_id}")
        if slot_id >= self.arch.user_mem_slots:
            raise KvmIoctlError(errno.EINVAL, f"{name}: slot ids go up to {self.arch.user_mem_slots - 1}")
        if flags & ~(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY):
            raise KvmIoctlError(errno.EINVAL, f"{name}: flags {flags:#x} not modelled")

    def kvm_check_memslot_overlap(self, name: str, key: tuple[int, int], base: int, size: int) -> None:
        """Models kvm_check_memslot_overlap() (virt/kvm/kvm_main.c): EEXIST when the range overlaps another
        memslot of the same address space. Simplified: a scan of every slot, not the kernel's gfn tree."""
        as_id = key[0]
        for (other_as, other_id), other in self.memslots.items():
            if (other_as, other_id) != key and other_as == as_id and \
                    base < other.base + other.size and other.base < base + size:
                raise KvmIoctlError(errno.EEXIST, f"{name} at {base:#x} overlaps slot {other_id} at "
                                    f"{other.base:#x}")

    def _change_memslot(self, name: str, key: tuple[int, int], old: Memslot | None, base: int, size: int,
                        flags: int) -> int:
        """Apply the change as __kvm_set_memory_region() classifies it (KVM_MR_DELETE, _CREATE, _MOVE,
        _FLAGS_ONLY, or nothing for an unchanged region) and return how many memslot swaps
        kvm_set_memslot() makes for it: two for a delete or a move (invalidate, then commit), one for a
        create or a flags change, none for no change. EINVAL for a delete of nothing, a size change or a
        KVM_MEM_READONLY change."""
        if size == 0:
            if old is None:
                raise KvmIoctlError(errno.EINVAL, f"{name} does not exist")
            del self.memslots[key]
            return 2
        if old is None:
            self.memslots[key] = Memslot(base, size, flags)
            return 1
        if old.size != size:
            raise KvmIoctlError(errno.EINVAL, f"{name} cannot change size")
        if (old.flags ^ flags) & KVM_MEM_READONLY:
            raise KvmIoctlError(errno.EINVAL, f"{name} cannot change KVM_MEM_READONLY")
        if old.base == base and old.flags == flags:
            return 0
        self.memslots[key] = Memslot(base, size, flags)
        return 2 if old.base != base else 1

    def create_vcpu(self, vcpu_id: int) -> None:
        """KVM_CREATE_VCPU, models kvm_vm_ioctl_create_vcpu(): EEXIST for an id already in use;
        ``created_vcpus`` goes up first; then the architecture's kvm_arch_vcpu_create() (x86: the
        APIC-access page or the ``kvm_has_noapic_vcpu`` static key; arm64: the vCPU's redistributor)."""
        self.alive()
        if vcpu_id in self.vcpu_ids:
            raise KvmIoctlError(errno.EEXIST, f"KVM_CREATE_VCPU: vCPU {vcpu_id} already exists")
        self.vcpu_ids.add(vcpu_id)
        self.created_vcpus += 1
        self.sim.spend(self.costs.create_vcpu)
        self.arch.kvm_arch_vcpu_create(first=self.created_vcpus == 1)
        self.registrations_returned()

    def run_vcpu(self, vcpu_id: int, section_ns: int, period_ns: int, offset_ns: int = 0) -> VcpuReaders:
        """The first KVM_RUN of a vCPU: the architecture's kvm_arch_vcpu_run_pid_change() (arm64: the
        vGIC's distributor), then from now on it handles exits inside SRCU read sections. EBADF for a
        vCPU that was never created (there is no fd to issue it on). A second first entry of the same
        vCPU is not modelled (the kernel would block it on vcpu->mutex) and is refused."""
        self.alive()
        if vcpu_id not in self.vcpu_ids:
            raise KvmIoctlError(errno.EBADF, f"KVM_RUN: vCPU {vcpu_id} has not been created")
        if vcpu_id in self.vcpu_readers:
            raise ValueError(f"vCPU {vcpu_id} already runs: a sequence starts each vCPU once")
        self.arch.kvm_arch_vcpu_run_pid_change()
        self.registrations_returned()
        self.sim.spend(self.costs.kvm_run_entry)
        readers = VcpuReaders(self, vcpu_id, section_ns, period_ns, offset_ns)
        self.vcpu_readers[vcpu_id] = readers
        return readers

    def stop_vcpus(self) -> None:
        """Every vCPU leaves KVM_RUN; returns once their read sections are over."""
        for r in self.vcpu_readers.values():
            r.stop()
        ends = [e for r in self.vcpu_readers.values() if (e := r.section_end()) is not None]
        if ends:
            self.sim.run_until(max(ends))
            self.catch_up_readers()

    def destroy_vm(self) -> None:
        """The last reference dropped (the VM fd closed after its vCPU fds): models kvm_destroy_vm()
        (virt/kvm/kvm_main.c, v6.18), the parts that take time:

        - the vCPUs have left KVM_RUN (their fds are closed first: each holds a reference);
        - ``Costs.destroy_vm``: everything with a fixed cost (kvm_vm_release()'s irqfd clean-up, the
          uevent and debugfs, kvm_free_irq_routing(), kvm_io_bus_destroy() of the current buses, which
          are freed directly, the memslots);
        - :meth:`mmu_notifier_unregister`: a grace period of the host's one mmu-notifier srcu_struct;
        - cleanup_srcu_struct(&kvm->irq_srcu), then srcu_barrier(&kvm->srcu): it waits until every
          callback queued on kvm->srcu has run, the old buses a call_srcu() registration left among
          them. It starts no grace period: it waits for the one those callbacks wait for, and then for
          their invocation, which srcu_gp_end() puts one jiffy after the end of a normal grace period
          (the per-CPU callback timer, rounded up to the second tick) and runs at once after an
          expedited one (kernel/rcu/srcutree.c, v6.18; :func:`kernel_model.srcutree.srcu_barrier`);
        - cleanup_srcu_struct(&kvm->srcu), whose warnings are checked: without the barrier (variant
          ``call_srcu_no_barrier``) the callbacks are still queued and the kernel WARNs and leaks it.

        The barrier came with the call_srcu() change (``variants.SRCU_BARRIER_REVIEW``: Sean
        Christopherson's review of its v3, Sep 8 2025: "To address the syzkaller splat, KVM needs to
        call srcu_barrier() prior to freeing the structure.")
        Left out: the vCPUs' and devices' own freeing beyond the fixed cost, and on x86 the
        ``kvm_has_noapic_vcpu`` static key that kvm_free_lapic() drops for an LAPIC-less vCPU (it patches
        code only when the host's last such vCPU goes, which on a host running other VMs is rarely this
        one: not seen in this project's measurements)."""
        self.alive()
        self.stop_vcpus()
        self.sim.spend(self.costs.destroy_vm)
        for bus_idx in KvmBus:  # kvm_io_bus_destroy(): the current buses are freed directly
            self.kfree_bus(self.buses[bus_idx])
        self.mmu_notifier_unregister()
        srcutree.cleanup_srcu_struct(self.irq_srcu)
        if self.variant.teardown_barrier:
            srcutree.srcu_barrier(self.srcu)
        pending = len(self.srcu.srcu_cblist)
        srcutree.cleanup_srcu_struct(self.srcu)
        self.checker.check(pending == 0, ViolationKind.TEARDOWN_WITHOUT_BARRIER, self.sim.now,
                           f"cleanup_srcu_struct() with {pending} SRCU callback(s) queued: the kernel WARNs "
                           "and leaks kvm->srcu (srcu_barrier() missing)", pending=pending)
        self.destroyed = True

    def mmu_notifier_unregister(self) -> None:
        """kvm_destroy_vm()'s mmu_notifier_unregister() (mm/mmu_notifier.c, v6.18): after taking the VM
        off its mm's notifier list it calls ``synchronize_srcu(&srcu)``, on one srcu_struct the whole host
        shares. That is expedited while the struct is idle (srcu_should_expedite()), so a lone VM's
        teardown pays tens of microseconds; when other VMs come and go at the same time their grace
        periods keep it busy, and the synchronize is a normal grace period that ends on the timer tick
        (1 to 2 jiffies): what makes VM teardowns on parallel threads slow each other down."""
        srcutree.synchronize_srcu(self.mmu_notifier_srcu)

    def alive(self) -> None:
        """EBADF once the VM is destroyed (there is no fd left to issue an ioctl on)."""
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
