"""The shadow checker.

Soundness rests on one discipline: the shadow mirrors a registration *after* KVM_IOEVENTFD returned and
removes a device *before* the deassign is issued (``VmObserver``), so whatever the shadow says an
in-kernel device claims, the kernel claimed too, at every moment. Each mirrored change publishes a new
immutable *version* of the shadow's buses.

The per-exit check: a vCPU loop reads the shadow version just before KVM_RUN (V_entry) and just after it
returns (V_exit). The kernel looked the access up at some moment in between, on a bus that claimed at
least what the shadow's bus of that moment claims. So an exit to userspace is a violation exactly when
*every* shadow version from V_entry to V_exit has a device that claims the access: the kernel had it,
and still sent the access out. An exit some version in the window does not claim is allowed (the
kernel may have looked it up then), so a correct kernel is never flagged, however registrations and
vCPUs interleave. Reading versions takes no lock: a version's buses never change once published.

Reconciliation: in-kernel completions are counted by the doorbells' eventfds. At each reconciliation
point (a guest's report through the control device, and the end of the run) every eventfd count the
kernel produced since the previous point must belong to a registration the kernel *may* have had in
that interval, and over the whole run each doorbell's guest-reported writes must equal its eventfd
count plus the writes that exited to userspace. The second rule rests on the guest's word, so a
mismatch there is the guest's error, never the kernel's (see ``Rule``).

Two intervals per registration, because the exit check and the reconciliation need opposite bounds.
The bus versions must never claim more than the kernel has (else a correct exit is flagged): a device
is on them from "assign returned" to "deassign about to be issued". The reconciliation must never
disown a completion the kernel may have made (else a correct completion is flagged): a registration
is *open* from "assign about to be issued" to "deassign returned" (``VmObserver`` reports all four
moments). A write from another vCPU can be completed in the kernel the moment the assign has
published the new bus, before the ioctl returns, and until the deassign's synchronize_srcu_expedited()
returns; marking the registration open before the ioctl, under the shadow's lock, closes both gaps.
Why marking before rather than reconciling under the registration lock: the mark is made where every
registration passes (the ``Vm`` wrapper), whoever issues it, and a guest's report never waits for a
deregistration's grace period; the price is that an assign the kernel refuses leaves its doorbell open
until the next reconciliation point, which can only hide a violation, never invent one.

Fault injection (``--inject``) makes the shadow deliberately wrong, to prove the checker can fail:
``drop-registration`` ignores one registration, ``delay-registration`` mirrors one only after the next
reconciliation point, ``stale-bus`` keeps devices on the shadow's bus after they are deregistered.
"""

from __future__ import annotations

import enum
import threading
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from kernel_model.invariants import InvariantChecker
from kernel_model.kvm_host import KvmIoctlError
from kernel_model.kvm_io_bus import Ioeventfd, KvmBus, KvmIoBus, KvmIoDevice, first_taker, offered_devices
from kernel_model.kvm_main import KvmModel
from kernel_model.platforms import get_platform
from kernel_model.sim import Sim
from kernel_model.variants import get_variant
from minivmm.kvm.exits import MMIO_EXITS, PIO_EXITS, VcpuExit
from minivmm.kvm.vm import IoEvent
from minivmm.shadow.rules import FIRST_KEPT, Rule

if TYPE_CHECKING:  # the findings' dataclasses: imported when there is a finding, or at the run's end
    from minivmm.shadow.summary import ShadowSummary, ShadowViolation

MMIO, PIO = KvmBus.KVM_MMIO_BUS, KvmBus.KVM_PIO_BUS
MAX_KEPT_VIOLATIONS = 20
#: Bus versions kept at most, whatever the vCPUs' windows (see ShadowChecker._publish).
MAX_VERSIONS = 1024
#: Accesses inside a bus's ranges whose lookup one bus view caches (see _BusView).
MAX_CACHED_ACCESSES = 4096


class Injection(str, enum.Enum):
    """The faults ``--inject`` can plant in the shadow."""

    DROP_REGISTRATION = "drop-registration"
    DELAY_REGISTRATION = "delay-registration"
    STALE_BUS = "stale-bus"


class _BusView:
    """One published bus of the twin as the exit check reads it: the model's immutable ``KvmIoBus``, the
    address spans its ranges can match at all, and a bounded cache of the model's lookup.

    Memory is bounded by the bus, not by the guest: an access outside every span is unclaimed (a range
    matches an access only if the access starts inside it, or, for a zero-length range, at its
    address, so the kernel's lookup finds none), decided by one bisection and never cached; an access
    inside a span is looked up with the model's kernel-faithful walk (``offered_devices``, then
    ``first_taker``) and its verdict cached by (address, length), at most ``MAX_CACHED_ACCESSES`` of
    them (past that the lookup is simply made again). The bus never changes, so neither do the
    verdicts: one view serves every version in which this bus is current.
    """

    __slots__ = ("bus", "starts", "ends", "cache")

    def __init__(self, bus: KvmIoBus) -> None:
        self.bus = bus
        spans: list[list[int]] = []
        for start, end in sorted((r.addr, r.addr + max(r.len, 1)) for r in bus.range):
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        self.starts = tuple(sp[0] for sp in spans)
        self.ends = tuple(sp[1] for sp in spans)
        #: (addr, length) -> _Verdict; written by any vCPU thread (a benign race: two threads that
        #: miss store equal verdicts).
        self.cache: dict[tuple[int, int], _Verdict] = {}

    def claims(self, addr: int, length: int, data: bytes | None) -> bool:
        """Whether an in-kernel device on this bus takes the access: a read if ``data`` is None, else a
        write of ``data``."""
        i = bisect_right(self.starts, addr) - 1
        if i < 0 or addr >= self.ends[i]:
            return False
        key = (addr, length)
        verdict = self.cache.get(key)
        if verdict is None:
            verdict = _Verdict.of(offered_devices(self.bus, addr, length), addr, length)
            if len(self.cache) < MAX_CACHED_ACCESSES:
                self.cache[key] = verdict
        if data is None:
            return verdict.read
        if verdict.write is not None:
            return verdict.write
        return first_taker(verdict.offered, addr, length, int.from_bytes(data, "little")) is not None


class _Verdict(NamedTuple):
    """The model's answer for one (address, length) on one bus: whether a read is taken, whether a
    write is taken (None: it depends on the value, a datamatch ioeventfd), and the devices offered."""

    read: bool
    write: bool | None
    offered: tuple[KvmIoDevice, ...]

    @classmethod
    def of(cls, offered: tuple[KvmIoDevice, ...], addr: int, length: int) -> _Verdict:
        """The verdict for an access offered to ``offered`` (from ``offered_devices``)."""
        read = first_taker(offered, addr, length, 0, is_write=False) is not None
        write: bool | None = False
        for dev in offered:
            if not isinstance(dev, Ioeventfd) or dev.datamatch is None:
                if first_taker((dev,), addr, length, 0) is not None:
                    write = True  # takes a write whatever its value
                    break
            elif first_taker((dev,), addr, length, dev.datamatch) is not None:
                write = None  # takes a write of one value only
        return cls(read, write, offered)


class DoorbellAccount:
    """What is known about one eventfd-backed doorbell: its address, its eventfd and that eventfd's
    running total (``total``, EventCounter.total), and the counts reconciled so far."""

    __slots__ = ("addr", "fd", "total", "kernel_total", "guest_reported", "userspace_writes",
                 "open_registrations", "open_since_check")

    def __init__(self, addr: int, fd: int, total: Callable[[], int]) -> None:
        self.addr = addr
        self.fd = fd
        self.total = total
        self.kernel_total = 0
        self.guest_reported = 0
        self.userspace_writes = 0
        #: Registrations of this eventfd the kernel may have now: from "assign about to be issued" to
        #: "deassign returned" (or "assign failed").
        self.open_registrations = 0
        #: Whether some registration was open at any moment since the last reconciliation point.
        self.open_since_check = False


class ShadowChecker:
    """The kernel-model twin of one VM, and the checks. Implements ``VmObserver``."""

    def __init__(self, variant: str = "call_srcu", platform: str = "pvm", hz: int = 250,
                 inject: Injection | None = None) -> None:
        self._lock = threading.Lock()  # taken by mirroring and reconciliation, never by the exit check
        self.model = KvmModel(Sim(hz, 0.0), get_variant(variant), get_platform(platform), InvariantChecker())
        self.inject = inject
        self._injected = False
        #: Whether the planted fault ever acted: a guest that registers (or deregisters) nothing while it
        #: runs never gives it the chance, and its "no violation" then tests nothing.
        self.inject_exercised = False
        self._running = False
        self._delayed: list[IoEvent] = []
        self._unmarked: set[IoEvent] = set()  # registrations an injected fault keeps the shadow from seeing
        self._devices: dict[tuple[int, int, int | None, bool], Ioeventfd] = {}
        self.doorbells: dict[int, DoorbellAccount] = {}  # by eventfd
        self._checked: defaultdict[int, int] = defaultdict(int)  # per vCPU: each thread updates its own
        self.registrations_mirrored = 0
        self.deregistrations_mirrored = 0
        self.completions_reconciled = 0
        self.reconciliations = 0
        self.violation_count = 0
        self.violations: list[ShadowViolation] = []  # the kernel's (the first MAX_KEPT_VIOLATIONS)
        self.guest_error_count = 0
        self.guest_errors: list[ShadowViolation] = []  # the guest's (likewise)
        self._not_judged: defaultdict[int, int] = defaultdict(int)  # per vCPU, like _checked
        # Each version's two buses by version number, from ``_oldest`` to ``version``; see _publish()
        # for who owns what.
        self._mmio_views: dict[int, _BusView] = {}
        self._pio_views: dict[int, _BusView] = {}
        #: The bus exits of the exit registry, each with the views of its bus.
        self._views_of: dict[type, dict[int, _BusView]] = {
            **{cls: self._pio_views for cls in PIO_EXITS}, **{cls: self._mmio_views for cls in MMIO_EXITS}}
        self._oldest = 0
        #: Per vCPU in a run: the oldest version its current (or next) KVM_RUN window can start at.
        self._entry: dict[int, int] = {}
        self.versions_published = 0
        self.version = -1
        self._publish()

    # --- versions ----------------------------------------------------------------------------------
    def _publish(self) -> None:
        """Publish the model's buses as a new version, and prune the versions no window can reach.

        Who owns what: versions are added and pruned only here, by the thread that mirrors an ioctl,
        under ``_lock``; vCPU threads only read them, lock-free. Each vCPU thread owns its entry in
        ``_entry`` and only ever raises it: after judging an exit it stores that exit's V_exit (its next
        KVM_RUN's V_entry, read after, can only be newer), and it leaves with ``vcpu_done``. Entries are
        created (``vcpu_created``) and removed (``vcpu_done``) under ``_lock``, so the dict changes size
        only under the lock. Hence every version a window can still ask about is >= min(_entry): a
        vCPU's entry is <= every version it will read, even between reading ``version`` and storing it.
        Versions below that are dropped. A vCPU that stays in one KVM_RUN for long (a guest spinning
        without exits) would pin versions without bound, so at most ``MAX_VERSIONS`` are kept: an exit
        whose window starts at a dropped version is not judged (counted in ``exits_not_judged``), which
        can hide a violation, never invent one.

        The new version is stored before ``version`` is raised, so a reader that sees a number finds
        its version (a dict store and an attribute store are each atomic under the GIL).
        """
        self._trim_model_history()
        number = self.versions_published
        mmio, pio = self.model.buses[MMIO], self.model.buses[PIO]
        mmio_views, pio_views = self._mmio_views, self._pio_views
        prev_mmio, prev_pio = mmio_views.get(self.version), pio_views.get(self.version)
        mmio_views[number] = prev_mmio if prev_mmio is not None and prev_mmio.bus is mmio else _BusView(mmio)
        pio_views[number] = prev_pio if prev_pio is not None and prev_pio.bus is pio else _BusView(pio)
        self.versions_published = number + 1
        self.version = number
        low = min(min(self._entry.values(), default=number), number)
        low = max(low, number - MAX_VERSIONS + 1)
        while self._oldest < low:
            mmio_views.pop(self._oldest, None)
            pio_views.pop(self._oldest, None)
            self._oldest += 1

    def _trim_model_history(self) -> None:
        """Drop the twin's SRCU bookkeeping of the past: the record of every grace period, who asked
        for each and every blocking wait are kept by the model for its reports and attribution (not
        kernel state); the shadow reads none of it, and a guest can start grace periods without end
        (a register/unregister loop), so only what the model still reads is kept: the grace period in
        progress (srcu_gp_end() completes the last record) and the requests for ones yet to start."""
        ssp = self.model.srcu
        if len(ssp.grace_periods) > 16:
            del ssp.grace_periods[:-1]
        if len(ssp.waits) > 16:
            ssp.waits.clear()
        if len(ssp.gp_requests) > 16:
            for seq in [seq for seq in ssp.gp_requests if seq <= ssp.srcu_gp_seq]:
                del ssp.gp_requests[seq]

    @property
    def versions_kept(self) -> int:
        """Bus versions held now (the rest were pruned)."""
        return len(self._mmio_views)

    def vcpu_done(self, vcpu_id: int) -> None:
        """The vCPU's loop has ended: it judges no more exits, so it pins no version."""
        with self._lock:
            self._entry.pop(vcpu_id, None)

    @property
    def exits_not_judged(self) -> int:
        """Bus exits the rule could not judge: string I/O out inside a device's range, or a window
        that starts at a version the MAX_VERSIONS cap dropped (allowed, as the rule must when unsure)."""
        return sum(self._not_judged.values())

    @property
    def exits_checked(self) -> int:
        """Bus exits (PIO and MMIO) the check saw, over all vCPUs."""
        return sum(self._checked.values())

    def attach_counter(self, fd: int, total: Callable[[], int], addr: int) -> None:
        """Tell the shadow about a doorbell eventfd the VMM owns: how to read its running total, and
        the address it will be registered at (writes there are accounted from now on)."""
        with self._lock:
            self.doorbells[fd] = DoorbellAccount(addr, fd, total)

    def vm_running(self) -> None:
        """The guest starts: from now on a fault injection targets the next registration."""
        self._running = True

    # --- VmObserver --------------------------------------------------------------------------------
    def _account(self, event: IoEvent) -> DoorbellAccount:
        acct = self.doorbells.get(event.fd)
        if acct is None:
            acct = DoorbellAccount(event.addr, event.fd, lambda: 0)  # not ours to reconcile
        return acct

    def ioeventfd_assigning(self, event: IoEvent) -> None:
        """A registration is about to be issued: from now on the kernel may complete writes on it, so
        its doorbell is open (unless a fault is injected: then the shadow does not see it)."""
        with self._lock:
            armed = self._running and not self._injected  # faults target a registration made at run time
            if armed and self.inject in (Injection.DROP_REGISTRATION, Injection.DELAY_REGISTRATION):
                self._injected = True
                self.inject_exercised = True
                self._unmarked.add(event)
                if self.inject is Injection.DELAY_REGISTRATION:
                    self._delayed.append(event)
                return
            self._open(self._account(event))

    @staticmethod
    def _open(acct: DoorbellAccount) -> None:
        acct.open_registrations += 1
        acct.open_since_check = True

    def ioeventfd_assigned(self, event: IoEvent, ok: bool = True) -> None:
        """A registration returned: mirror it on the bus versions (``ok`` False: the kernel refused
        it, so it is no longer open)."""
        with self._lock:
            if event in self._unmarked:
                if not ok:
                    self._unmarked.discard(event)
                    self._delayed = [e for e in self._delayed if e != event]
                return
            acct = self._account(event)
            if not ok:
                acct.open_registrations -= 1
                return
            self._mirror_assign(event)

    def _mirror_assign(self, event: IoEvent) -> None:
        try:
            dev = self.model.ioeventfd(event.addr, event.length, event.datamatch, event.pio)
        except KvmIoctlError:
            return  # the kernel accepted what the model refuses: not a bus-state question
        self._devices[(event.addr, event.length, event.datamatch, event.pio)] = dev
        self.registrations_mirrored += 1
        self._publish()

    def ioeventfd_deassigning(self, event: IoEvent) -> None:
        """A deregistration is about to be issued: take the device off the bus versions first."""
        with self._lock:
            if self.inject is Injection.STALE_BUS:
                self.inject_exercised = True
                return
            key = (event.addr, event.length, event.datamatch, event.pio)
            if key not in self._devices:
                return
            self.model.ioeventfd_deassign(event.addr, event.length, event.datamatch, event.pio)
            del self._devices[key]
            self.deregistrations_mirrored += 1
            self._publish()

    def ioeventfd_deassigned(self, event: IoEvent, ok: bool = True) -> None:
        """A deregistration returned: the kernel no longer completes writes on it (its
        synchronize_srcu_expedited() waited for every reader), so it is closed. If the deassign
        failed, the kernel may still have it: it stays open."""
        with self._lock:
            if event in self._unmarked:
                if ok:
                    self._unmarked.discard(event)
                    self._delayed = [e for e in self._delayed if e != event]
                return
            if ok:
                self._account(event).open_registrations -= 1

    def irqchip_created(self) -> None:
        """KVM_CREATE_IRQCHIP returned: the platform's devices are on the buses."""
        with self._lock:
            self.model.create_irqchip()
            self._publish()

    def memory_region_set(self, slot: int, guest_phys_addr: int, memory_size: int) -> None:
        """Memslots do not change the io buses; mirrored for the model's SRCU state only."""
        with self._lock:
            try:
                self.model.set_user_memory_region(slot, guest_phys_addr, memory_size)
            except KvmIoctlError:
                pass

    def vcpu_created(self, vcpu_id: int) -> None:
        """KVM_CREATE_VCPU returned: its first KVM_RUN window starts at this version or later."""
        with self._lock:
            self.model.create_vcpu(vcpu_id)
            self._entry[vcpu_id] = self.version
            self._checked[vcpu_id] += 0  # the entry exists before the vCPU's thread updates it

    # --- the per-exit check (lock-free) ------------------------------------------------------------
    def check_exit(self, vcpu_id: int, exit_: VcpuExit, v_entry: int, v_exit: int) -> None:
        """Judge one exit that reached userspace, given the shadow versions around its KVM_RUN.

        The hot path: most exits come from a loop on one bus version (V_entry == V_exit) at an address
        outside every range of that version's bus, which one bisection settles (see _BusView);
        anything else (an access inside a range, a window over several versions) goes to
        :meth:`_judge`.
        """
        views = self._views_of.get(type(exit_))
        if views is None:  # not an exit of an access to a bus
            self._entry[vcpu_id] = v_exit
            return
        self._checked[vcpu_id] += 1
        if v_entry == v_exit:
            view = views.get(v_entry)
            if view is not None:
                # The port or address, first in each bus exit (indexing: faster than bus_access()).
                addr = exit_[0]  # type: ignore[misc]
                i = bisect_right(view.starts, addr) - 1
                if i < 0 or addr >= view.ends[i]:
                    self._entry[vcpu_id] = v_exit
                    return
        self._judge(vcpu_id, exit_, v_entry, v_exit)
        self._entry[vcpu_id] = v_exit

    def _judge(self, vcpu_id: int, exit_: VcpuExit, v_entry: int, v_exit: int) -> None:
        """The full rule: a violation iff the access is claimed in every version of the window."""
        access = exit_.bus_access()  # type: ignore[union-attr]  # only bus exits reach here
        if access is None:  # string I/O out inside a range: not one access
            self._not_judged[vcpu_id] += 1
            return
        pio, addr, length, data = access
        views = self._pio_views if pio else self._mmio_views
        for number in range(v_entry, v_exit + 1):
            view = views.get(number)
            if view is None:  # dropped by the MAX_VERSIONS cap: not judged
                self._not_judged[vcpu_id] += 1
                return
            if not view.claims(addr, length, data):
                return  # the kernel may have looked it up on a bus like this one: allowed
        self._violation(Rule.EXIT_CLAIMED, vcpu_id, exit_, addr, (v_entry, v_exit),
                        f"{'PIO' if pio else 'MMIO'} {'read' if data is None else 'write'} at {addr:#x} "
                        f"(len {length}) exited to userspace although an in-kernel device claims it in every "
                        "shadow bus version between the KVM_RUN's entry and its exit")

    def _violation(self, rule: Rule, vcpu: int | None, exit_: Any, addr: int, versions: tuple[int, int],
                   message: str) -> None:
        with self._lock:
            self._violation_locked(rule, vcpu, exit_, addr, versions, message)

    def _violation_locked(self, rule: Rule, vcpu: int | None, exit_: Any, addr: int,
                          versions: tuple[int, int], message: str) -> None:
        """Count a finding (the kernel's or the guest's, by its rule) and keep the first few; the caller
        holds ``_lock``."""
        from minivmm.shadow.summary import ShadowViolation
        finding = ShadowViolation(rule, vcpu, str(exit_), addr, versions, message)
        if rule.guest_error:
            self.guest_error_count += 1
            if len(self.guest_errors) < MAX_KEPT_VIOLATIONS:
                self.guest_errors.append(finding)
            return
        self.violation_count += 1
        if len(self.violations) < MAX_KEPT_VIOLATIONS:
            self.violations.append(finding)

    def note_userspace_doorbell_write(self, fd: int) -> None:
        """A write to a doorbell's address reached userspace (the kernel did not take it)."""
        acct = self.doorbells.get(fd)
        if acct is not None:
            with self._lock:
                acct.userspace_writes += 1

    # --- reconciliation ----------------------------------------------------------------------------
    def guest_report(self, fd: int, writes: int) -> None:
        """The guest says it wrote ``writes`` times to this doorbell since its last report."""
        acct = self.doorbells.get(fd)
        if acct is not None:
            with self._lock:
                acct.guest_reported += writes
        self.reconcile()

    def reconcile(self, final: bool = False, judge_reports: bool = True) -> None:
        """Drain every doorbell's eventfd and account for what the kernel counted. ``final``: the run is
        over; then, if ``judge_reports`` (the guest halted, so it had the chance to report every write),
        each doorbell's reported writes must add up."""
        with self._lock:
            self.reconciliations += 1
            for acct in self.doorbells.values():
                total = acct.total()
                delta = total - acct.kernel_total
                acct.kernel_total = total
                # Sound: every count in ``delta`` was made while the kernel had a registration of
                # this eventfd, hence while one was open (open covers all the kernel may have), hence
                # one was open at the previous point (open_since_check was set to True there) or
                # opened since (which sets it).
                if delta and not (acct.open_since_check or acct.open_registrations):
                    self._violation_locked(
                        Rule.UNACCOUNTED_COMPLETION, None, "-", acct.addr, (self.version, self.version),
                        f"the kernel completed {delta} write(s) at {acct.addr:#x} in the kernel (eventfd "
                        f"{acct.fd}) while no registration of it was open")
                elif delta:
                    self.completions_reconciled += delta
                acct.open_since_check = acct.open_registrations > 0
            delayed, self._delayed = self._delayed, []
            for event in delayed:  # a delayed registration is seen only now (fault injection)
                self._unmarked.discard(event)
                self._open(self._account(event))
                self._mirror_assign(event)
        if final and judge_reports:
            self._final_totals()

    def _final_totals(self) -> None:
        for acct in self.doorbells.values():
            if acct.guest_reported and acct.guest_reported != acct.kernel_total + acct.userspace_writes:
                self._violation(Rule.GUEST_REPORT_DOES_NOT_ADD_UP, None, "-", acct.addr,
                                (self.version, self.version),
                                f"doorbell {acct.addr:#x}: the guest reported {acct.guest_reported} writes, the "
                                f"kernel counted {acct.kernel_total} and {acct.userspace_writes} exited")

    def summary(self) -> ShadowSummary:
        """The shadow section of the run report."""
        from minivmm.shadow.summary import ShadowSummary
        return ShadowSummary(
            inject=self.inject.value if self.inject else None,
            inject_exercised=self.inject_exercised if self.inject else None, exits_checked=self.exits_checked,
            exits_not_judged=self.exits_not_judged, registrations_mirrored=self.registrations_mirrored,
            deregistrations_mirrored=self.deregistrations_mirrored,
            in_kernel_completions_reconciled=self.completions_reconciled, reconciliations=self.reconciliations,
            bus_versions=self.versions_published, bus_versions_kept=self.versions_kept,
            violations=self.violation_count, first_violations=tuple(self.violations[:FIRST_KEPT]),
            guest_errors=self.guest_error_count, first_guest_errors=tuple(self.guest_errors[:FIRST_KEPT]),
            model_invariant_violations=tuple(self.model.checker.violations[:FIRST_KEPT]))
