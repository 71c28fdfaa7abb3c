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
from dataclasses import asdict, dataclass
from typing import Any
from collections.abc import Callable

from kernel_model.invariants import InvariantChecker
from kernel_model.kvm import KvmIoctlError, KvmModel
from kernel_model.kvm_io_bus import Ioeventfd, KvmBus, KvmIoBus, KvmIoDevice, first_taker, offered_devices
from kernel_model.platforms import get_platform
from kernel_model.sim import Sim
from kernel_model.variants import get_variant
from minivmm.kvm.exits import IoIn, IoOut, MmioRead, MmioWrite, VcpuExit
from minivmm.kvm.vm import IoEvent

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


class Rule(str, enum.Enum):
    """The rules a finding can break: the kernel's (a violation, exit code 3) or the guest's (a guest
    error, exit code 5)."""

    #: The kernel's: an exit of an access some in-kernel device claims in every version of its window.
    EXIT_CLAIMED = "exit-of-a-claimed-access"
    #: The kernel's: an eventfd count no open registration accounts for.
    UNACCOUNTED_COMPLETION = "unaccounted-in-kernel-completion"
    #: The guest's: the writes a guest reported on a doorbell differ from what the kernel counted plus
    #: what exited. Only the guest's word says how many it wrote, so a guest can break this rule at
    #: will (``movl $0x03000005, 0xd0002000; hlt``: "I wrote 5 times"); it proves nothing about the
    #: kernel, whose completions the two rules above already check against the VMM's own knowledge.
    GUEST_REPORT_DOES_NOT_ADD_UP = "guest-report-does-not-add-up"

    @property
    def guest_error(self) -> bool:
        """Whether breaking this rule is the guest's fault (not the kernel's)."""
        return self is Rule.GUEST_REPORT_DOES_NOT_ADD_UP


@dataclass(frozen=True)
class ShadowViolation:
    """One broken rule, with what shows it."""

    rule: Rule
    vcpu: int | None
    exit: str
    addr: int
    versions: tuple[int, int]
    message: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["rule"] = self.rule.value
        return d


class _BusView:
    """One published bus of the twin as the exit check reads it: the model's immutable ``KvmIoBus``, the
    address spans its ranges can match at all, and a bounded cache of the model's lookup.

    Memory is bounded by the bus, not by the guest: an access outside every span is unclaimed (a range
    matches an access only if the access starts inside it, or, for a zero-length range, at its
    address), decided by one bisection and never cached; an access inside a span is looked up with
    the model's kernel-faithful walk (``offered_devices``) and cached by (address, length), and at most
    ``MAX_CACHED_ACCESSES`` of those are kept (past that the lookup is simply made again). Shared by
    consecutive versions while the bus does not change.
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
        #: (addr, length) -> the devices the kernel offers the access to; written by any vCPU thread
        #: (a benign race: two threads that miss store the same tuple).
        self.cache: dict[tuple[int, int], tuple[KvmIoDevice, ...]] = {}

    def offered(self, addr: int, length: int) -> tuple[KvmIoDevice, ...]:
        """The devices the kernel's lookup offers this access to, in order (empty: it exits)."""
        i = bisect_right(self.starts, addr) - 1
        if i < 0 or addr >= self.ends[i]:
            return ()
        key = (addr, length)
        offered = self.cache.get(key)
        if offered is None:
            offered = offered_devices(self.bus, addr, length)
            if len(self.cache) < MAX_CACHED_ACCESSES:
                self.cache[key] = offered
        return offered


class _Version:
    """One published state of the shadow's buses (never modified after publication)."""

    __slots__ = ("number", "mmio", "pio")

    def __init__(self, number: int, mmio: _BusView, pio: _BusView) -> None:
        self.number = number
        self.mmio = mmio
        self.pio = pio


@dataclass
class DoorbellAccount:
    """What is known about one eventfd-backed doorbell."""

    addr: int
    fd: int
    total: Callable[[], int]  # the eventfd's running total (EventCounter.total)
    kernel_total: int = 0
    guest_reported: int = 0
    userspace_writes: int = 0
    #: Registrations of this eventfd the kernel may have now: from "assign about to be issued" to
    #: "deassign returned" (or "assign failed").
    open_registrations: int = 0
    #: Whether some registration was open at any moment since the last reconciliation point.
    open_since_check: bool = False


class ShadowChecker:
    """The kernel-model twin of one VM, and the checks. Implements ``VmObserver``."""

    def __init__(self, variant: str = "call_srcu", platform: str = "pvm", hz: int = 250,
                 inject: Injection | None = None) -> None:
        self._lock = threading.Lock()  # taken by mirroring and reconciliation, never by the exit check
        self.model = KvmModel(Sim(hz, 0.0), get_variant(variant), get_platform(platform), InvariantChecker())
        self.inject = inject
        self._injected = False
        self._running = False
        self._delayed: list[IoEvent] = []
        self._unmarked: set[IoEvent] = set()  # registrations an injected fault keeps the shadow from seeing
        self._devices: dict[tuple, Ioeventfd] = {}
        self.doorbells: dict[int, DoorbellAccount] = {}  # by eventfd
        self._checked: dict[int, int] = {}  # per vCPU: each thread updates only its own entry
        self.registrations_mirrored = 0
        self.deregistrations_mirrored = 0
        self.completions_reconciled = 0
        self.reconciliations = 0
        self.violation_count = 0
        self.violations: list[ShadowViolation] = []  # the kernel's (the first MAX_KEPT_VIOLATIONS)
        self.guest_error_count = 0
        self.guest_errors: list[ShadowViolation] = []  # the guest's (likewise)
        self.exits_not_judged = 0
        # Versions by number, from ``_oldest`` to ``version``; see _publish() for who owns what.
        self._versions: dict[int, _Version] = {}
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
        # The twin's SRCU keeps a record of every grace period, for the model's reports; the shadow
        # never reads it and a guest can start grace periods without end (a register/unregister loop),
        # so keep only the one in progress (srcu_gp_end() completes the last record).
        grace_periods = self.model.srcu.grace_periods
        if len(grace_periods) > 16:
            del grace_periods[:-1]
        number = self.versions_published
        prev = self._versions.get(self.version)
        mmio, pio = self.model.buses[MMIO], self.model.buses[PIO]
        self._versions[number] = _Version(
            number,
            prev.mmio if prev is not None and prev.mmio.bus is mmio else _BusView(mmio),
            prev.pio if prev is not None and prev.pio.bus is pio else _BusView(pio))
        self.versions_published = number + 1
        self.version = number
        low = min(min(self._entry.values(), default=number), number)
        low = max(low, number - MAX_VERSIONS + 1)
        versions = self._versions
        while self._oldest < low:
            versions.pop(self._oldest, None)
            self._oldest += 1

    @property
    def versions_kept(self) -> int:
        """Bus versions held now (the rest were pruned)."""
        return len(self._versions)

    def vcpu_done(self, vcpu_id: int) -> None:
        """The vCPU's loop has ended: it judges no more exits, so it pins no version."""
        with self._lock:
            self._entry.pop(vcpu_id, None)

    @property
    def exits_checked(self) -> int:
        """Exits judged so far, over all vCPUs."""
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

    # --- the per-exit check (lock-free) ------------------------------------------------------------
    def check_exit(self, vcpu_id: int, exit_: VcpuExit, v_entry: int, v_exit: int) -> None:
        """Judge one exit that reached userspace, given the shadow versions around its KVM_RUN."""
        cls = type(exit_)
        if cls is MmioWrite:
            bus, addr, length, value, write = MMIO, exit_.addr, len(exit_.data), int.from_bytes(exit_.data, "little"), True
        elif cls is IoOut:
            if exit_.count != 1:
                self._entry[vcpu_id] = v_exit
                return  # string I/O: each item was offered to the bus; judged as a whole it is not one access
            bus, addr, length, value, write = PIO, exit_.port, exit_.size, int.from_bytes(exit_.data, "little"), True
        elif cls is MmioRead:
            bus, addr, length, value, write = MMIO, exit_.addr, exit_.length, 0, False
        elif cls is IoIn:
            bus, addr, length, value, write = PIO, exit_.port, exit_.size, 0, False
        else:
            self._entry[vcpu_id] = v_exit
            return
        self._checked[vcpu_id] = self._checked.get(vcpu_id, 0) + 1
        versions = self._versions
        try:
            for number in range(v_entry, v_exit + 1):
                version = versions.get(number)
                if version is None:  # dropped by the MAX_VERSIONS cap: not judged
                    self.exits_not_judged += 1
                    return
                view = version.mmio if bus is MMIO else version.pio
                if first_taker(view.offered(addr, length), addr, length, value, write) is None:
                    return  # the kernel may have looked it up on a bus like this one: allowed
        finally:
            self._entry[vcpu_id] = v_exit
        self._violation(Rule.EXIT_CLAIMED, vcpu_id, exit_, addr, (v_entry, v_exit),
                        f"{'MMIO' if bus is MMIO else 'PIO'} {'write' if write else 'read'} at {addr:#x} "
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

    def summary(self) -> dict[str, Any]:
        """The shadow section of the run report."""
        return {"enabled": True, "inject": self.inject.value if self.inject else None,
                "exits_checked": self.exits_checked, "registrations_mirrored": self.registrations_mirrored,
                "deregistrations_mirrored": self.deregistrations_mirrored,
                "in_kernel_completions_reconciled": self.completions_reconciled,
                "reconciliations": self.reconciliations, "bus_versions": self.versions_published,
                "bus_versions_kept": self.versions_kept, "exits_not_judged": self.exits_not_judged,
                "violations": self.violation_count,
                "first_violations": [v.to_json() for v in self.violations[:5]],
                "guest_errors": self.guest_error_count,
                "first_guest_errors": [v.to_json() for v in self.guest_errors[:5]],
                "model_invariant_violations": [v.to_json() for v in self.model.checker.violations[:5]]}
