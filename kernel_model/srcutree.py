"""Tree SRCU's grace-period machinery, function by function (kernel/rcu/srcutree.c, v6.18 + the
call_srcu_expedited() RFC of March 2026).

What is kept: the grace-period sequence and its states (idle, SCAN1, SCAN2), ``srcu_gp_seq_needed`` and
``srcu_gp_seq_needed_exp``, the two reader indexes and the flip, callbacks queued per grace period,
the delayed work that drives the state machine (``process_srcu``) with the delays ``srcu_get_delay()``
computes, the no-delay counters, callback invocation through the per-CPU work and its delay timer.

Simplified away, each said again where it is made:
- ``srcu_init()``'s sizing is modelled (BIG at init when ``nr_cpu_ids >= big_cpu_lim``, else SMALL,
  converting only under lock contention, which one VMM thread does not cause). A BIG struct keeps the
  calling CPU's ``srcu_data`` and the leaf and root ``srcu_node`` on its funnel path (``srcu_have_cbs``,
  ``srcu_gp_seq_needed_exp``); other CPUs' nodes are left out: the model has one updater thread, and
  for one updater the funnel never returns early where SMALL would not, so both sizes time alike but for
  where the callbacks run (BIG: the updater's CPU; SMALL: the boot CPU).
- Per-CPU lock/unlock counters are collapsed into one count of active readers per index; memory
  barriers and the smp_mb()/synchronize_rcu() flavours of the reader scan are not modelled (the scan
  has a fixed cost, ``Costs.reader_scan``).
- Sequence numbers start at 0 and never wrap (the kernel starts near ULONG_MAX to catch wrap bugs).
- The segmented callback list is a list of (grace-period sequence, callback): a callback is ready when
  its grace period is done; callbacks run in the order they were queued.
- ``rcu_gp_is_normal()`` and ``rcu_gp_is_expedited()`` are false (the boot-time defaults).

Where things run (``kernel_model.sim``): ``process_srcu`` on the CPU whose timer queued it (its delayed
work is queued with WORK_CPU_UNBOUND on the per-CPU rcu_gp workqueue, so where the timer fired, and
the timer fires on the CPU that armed it); ``srcu_invoke_callbacks`` on the CPU of the ``srcu_data``
that holds the callbacks (``queue_work_on(sdp->cpu)``): for a SMALL srcu_struct the boot CPU, where
srcu_gp_start_if_needed() queues every callback; the callback-delay timer (``sdp->delay_work``) on the
CPU that armed it, the one running srcu_gp_end(). Each of those timers can fire a tick late, as any
timer-wheel timer can (``kernel_model.tick``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from kernel_model.sim import Completion, DelayedWork, Sim, Timer, Work
from kernel_model.tick import BOOT_CPU

# rcu_seq: the low two bits of a sequence number are the state (kernel/rcu/rcu.h).
RCU_SEQ_CTR_SHIFT = 2
RCU_SEQ_STATE_MASK = (1 << RCU_SEQ_CTR_SHIFT) - 1
SRCU_STATE_IDLE = 0
SRCU_STATE_SCAN1 = 1
SRCU_STATE_SCAN2 = 2

# Constants and module-parameter defaults of kernel/rcu/srcutree.c (v6.18).
SRCU_INTERVAL = 1          # base delay, in jiffies, if no expedited grace period is pending
SRCU_MAX_INTERVAL = 10     # maximum delay from slow readers
SRCU_RETRY_CHECK_DELAY_US = 5   # SRCU_DEFAULT_RETRY_CHECK_DELAY (srcu_retry_check_delay)
SRCU_DEFAULT_MAX_NODELAY_PHASE_LO = 3
SRCU_DEFAULT_MAX_NODELAY_PHASE_HI = 1000
EXP_HOLDOFF_NS = 25_000    # DEFAULT_SRCU_EXP_HOLDOFF
BIG_CPU_LIM = 128          # big_cpu_lim
USEC_PER_SEC = 1_000_000

# Reader flavors (include/linux/srcu.h, v6.18): srcu_read_lock() is NORMAL; srcu_read_lock_fast() readers
# need a synchronize_rcu() in the grace period (SLOWGP), and their srcu_struct is never expedited unasked.
SRCU_READ_FLAVOR_NORMAL = 0x1
SRCU_READ_FLAVOR_NMI = 0x2
SRCU_READ_FLAVOR_FAST = 0x8
SRCU_READ_FLAVOR_SLOWGP = SRCU_READ_FLAVOR_FAST

# srcu_size_state values (include/linux/srcutree.h): SMALL until converted, BIG once the tree is used.
SRCU_SIZE_SMALL = 0
SRCU_SIZE_BIG = 9


def srcu_default_max_nodelay_phase(hz: int) -> int:
    """Models SRCU_DEFAULT_MAX_NODELAY_PHASE: the no-delay polls allowed per grace-period phase,
    ``clamp(2 * USEC_PER_SEC / HZ / SRCU_DEFAULT_RETRY_CHECK_DELAY, 3, 1000)`` -- enough non-sleeping
    polls to cover about one jiffy (the factor 2 counts process_srcu()'s own srcu_get_delay() call).
    400 at HZ=1000, 1000 at HZ=250 and HZ=100."""
    adjusted = 2 * USEC_PER_SEC // hz // SRCU_RETRY_CHECK_DELAY_US
    return min(max(adjusted, SRCU_DEFAULT_MAX_NODELAY_PHASE_LO), SRCU_DEFAULT_MAX_NODELAY_PHASE_HI)


def srcu_default_max_nodelay(hz: int) -> int:
    """Models SRCU_DEFAULT_MAX_NODELAY: consecutive no-delay reschedules of process_srcu() within one
    jiffy, ``max(SRCU_DEFAULT_MAX_NODELAY_PHASE, 100)``."""
    return max(srcu_default_max_nodelay_phase(hz), 100)


def srcu_init_size_state(nr_cpu_ids: int, big_cpu_lim: int = BIG_CPU_LIM) -> int:
    """Models srcu_init()'s sizing with ``convert_to_big`` = SRCU_SIZING_AUTO (the default): with
    ``nr_cpu_ids >= big_cpu_lim`` every srcu_struct is made BIG at init_srcu_struct() time
    (SRCU_SIZING_INIT), otherwise it starts SMALL and converts only under contention."""
    return SRCU_SIZE_BIG if nr_cpu_ids >= big_cpu_lim else SRCU_SIZE_SMALL


def rcu_seq_state(s: int) -> int:
    """Models rcu_seq_state(): the state bits of a sequence number."""
    return s & RCU_SEQ_STATE_MASK


def rcu_seq_snap(s: int) -> int:
    """Models rcu_seq_snap(): the sequence number at which a grace period starting after now has ended.

    From idle (4k) that is 4k + 4; from inside a grace period (4k + 1 or 4k + 2) it is 4k + 8: the
    grace period in flight may have begun before the caller's update, so the *next* one is needed.
    """
    return (s + 2 * RCU_SEQ_STATE_MASK + 1) & ~RCU_SEQ_STATE_MASK


def rcu_seq_done(cur: int, s: int) -> bool:
    """Models rcu_seq_done(): has grace period ``s`` ended, given the current sequence ``cur``?"""
    return cur >= s


class SrcuCallback:
    """A queued ``rcu_head``: ``func`` runs after grace period ``seq`` ends."""

    __slots__ = ("seq", "func", "name")

    def __init__(self, seq: int, func: Callable[[], None], name: str) -> None:
        self.seq = seq
        self.func = func
        self.name = name


class SrcuWarning(NamedTuple):
    """A WARN_ON() the kernel would print (cleanup_srcu_struct() and friends)."""

    function: str
    message: str
    time: int


class GpRequest(NamedTuple):
    """Who first asked for a grace period (bookkeeping for attribution, not kernel state): the caller
    tag the user of the srcu_struct set (e.g. a sequence step), the SRCU call, when, and whether it
    asked for an expedited grace period."""

    caller: Any
    call: str
    time: int
    expedited: bool


class GracePeriod:
    """A record of one grace period, for reports, tests and attribution: ``end`` is None while it runs;
    ``request`` is the first request for it (None if nobody asked for it, which does not happen)."""

    __slots__ = ("seq", "start", "end", "expedited_at_end", "request")

    def __init__(self, seq: int, start: int, end: int | None = None, expedited_at_end: bool = False,
                 request: GpRequest | None = None) -> None:
        self.seq = seq
        self.start = start
        self.end = end
        self.expedited_at_end = expedited_at_end
        self.request = request


class SrcuWait(NamedTuple):
    """A caller that blocked in synchronize_srcu*() or srcu_barrier(): from ``start`` to ``end`` it waited
    for grace period ``seq`` to end (and for every grace period that had to end before it)."""

    caller: Any
    call: str
    seq: int
    start: int
    end: int


class SrcuNode:
    """``struct srcu_node`` (BIG only): the grace periods requested through it, four at a time."""

    __slots__ = ("srcu_have_cbs", "srcu_gp_seq_needed_exp")

    def __init__(self, srcu_have_cbs: list[int], srcu_gp_seq_needed_exp: int) -> None:
        self.srcu_have_cbs = srcu_have_cbs
        self.srcu_gp_seq_needed_exp = srcu_gp_seq_needed_exp


#: SRCU_SNP_INIT_SEQ: the "nothing recorded yet" value of a node's sequence numbers.
SRCU_SNP_INIT_SEQ = 0x2


class SrcuStruct:
    """``struct srcu_struct`` with its ``srcu_usage`` and the updater CPU's ``srcu_data``, merged.

    ``nr_cpu_ids`` decides the size at init (see :func:`srcu_init_size_state`); the module-parameter
    defaults that depend on HZ (``srcu_max_nodelay_phase``, ``srcu_max_nodelay``) follow the sim's HZ.
    """

    def __init__(self, sim: Sim, name: str = "kvm->srcu", nr_cpu_ids: int = 2,
                 big_cpu_lim: int = BIG_CPU_LIM) -> None:
        self.sim = sim
        self.name = name
        self.srcu_max_nodelay_phase = srcu_default_max_nodelay_phase(sim.hz)
        self.srcu_max_nodelay = srcu_default_max_nodelay(sim.hz)
        self.srcu_size_state = srcu_init_size_state(nr_cpu_ids, big_cpu_lim)
        # BIG: the funnel path of the updater's CPU, leaf first (one node when the tree has one level).
        self.funnel_path: list[SrcuNode] = []
        if self.srcu_size_state == SRCU_SIZE_BIG:
            self.funnel_path = [SrcuNode([SRCU_SNP_INIT_SEQ] * 4, SRCU_SNP_INIT_SEQ) for _ in range(2)]
        # srcu_usage
        self.srcu_gp_seq = 0
        self.srcu_gp_seq_needed = 0
        self.srcu_gp_seq_needed_exp = 0
        self.srcu_gp_start = 0            # jiffies
        self.srcu_last_gp_end = -EXP_HOLDOFF_NS
        self.srcu_n_exp_nodelay = 0
        self.reschedule_jiffies = -1
        self.reschedule_count = 0
        self.work = DelayedWork(sim, lambda: process_srcu(self), "process_srcu")
        # srcu_data: the one that holds the callbacks, the boot CPU's for SMALL (srcu_gp_start_if_needed()
        # uses it below SRCU_SIZE_WAIT_CALL), the updater's own for BIG.
        self.sdp_cpu = BOOT_CPU if self.srcu_size_state == SRCU_SIZE_SMALL else sim.caller_cpu
        self.sdp_srcu_gp_seq_needed = 0
        self.sdp_srcu_gp_seq_needed_exp = 0
        self.srcu_cblist: list[SrcuCallback] = []
        self.srcu_cblist_invoking = False
        self.sdp_work = Work(sim, lambda: srcu_invoke_callbacks(self), "srcu_invoke_callbacks", self.sdp_cpu)
        self.sdp_delay_work = Timer(sim, self.sdp_work.queue_work)
        #: Per CPU: the reader flavors seen there (srcu_data's ->srcu_reader_flavor).
        self.srcu_reader_flavor: dict[int, int] = {}
        # Readers: srcu_ctrs[idx] collapsed to one active count per index.
        self.srcu_ctrp = 0
        self.active_readers = [0, 0]
        #: Called before the readers are looked at (a scan, a flip): readers whose sections are not
        #: events (a running vCPU, see kernel_model.kvm_main.VcpuReaders) catch up to now.
        self.look_at_readers: Callable[[], None] = lambda: None
        # Bookkeeping for reports and invariants (not kernel state).
        self.cleaned_up = False
        self.warnings: list[SrcuWarning] = []
        self.grace_periods: list[GracePeriod] = []
        self.callbacks_invoked = 0
        self.on_callback_after_cleanup: Callable[[SrcuCallback], None] | None = None
        # Attribution (not kernel state): who is calling now, who first asked for each grace period
        # (by the sequence number at which it ends), and every blocking wait.
        self.caller: Any = None
        self.gp_requests: dict[int, GpRequest] = {}
        self.waits: list[SrcuWait] = []

    def warn(self, function: str, message: str) -> None:
        """Record a WARN_ON()."""
        self.warnings.append(SrcuWarning(function, message, self.sim.now))

    @property
    def gp_in_flight(self) -> bool:
        """Whether a grace period is in progress."""
        return rcu_seq_state(self.srcu_gp_seq) != SRCU_STATE_IDLE


# --- readers -------------------------------------------------------------------------------------

def srcu_read_lock(ssp: SrcuStruct, flavor: int = SRCU_READ_FLAVOR_NORMAL) -> int:
    """Models __srcu_read_lock() (and, with ``flavor``, the other lock flavors): record the flavor on
    the reader's CPU (__srcu_check_read_flavor()), count a reader on the current index and return that
    index."""
    cpu = ssp.sim.cpu
    ssp.srcu_reader_flavor[cpu] = ssp.srcu_reader_flavor.get(cpu, 0) | flavor
    idx = ssp.srcu_ctrp
    ssp.active_readers[idx] += 1
    return idx


def srcu_read_unlock(ssp: SrcuStruct, idx: int) -> None:
    """Models __srcu_read_unlock(): the reader counted on ``idx`` leaves."""
    if ssp.active_readers[idx] <= 0:
        raise ValueError(f"srcu_read_unlock({idx}) without a matching srcu_read_lock()")
    ssp.active_readers[idx] -= 1


def srcu_readers_active_idx_check(ssp: SrcuStruct, idx: int) -> bool:
    """Models srcu_readers_active_idx_check(): no reader is left on ``idx``.

    Simplified: the per-CPU unlock/lock sums and their barriers are one count, read at a fixed cost.
    """
    ssp.sim.spend(ssp.sim.costs.reader_scan)
    ssp.look_at_readers()
    return ssp.active_readers[idx] == 0


def srcu_readers_active(ssp: SrcuStruct) -> bool:
    """Models srcu_readers_active(): any reader on either index."""
    ssp.look_at_readers()
    return sum(ssp.active_readers) > 0


# --- the grace-period state machine -------------------------------------------------------------

def srcu_gp_is_expedited(ssp: SrcuStruct) -> bool:
    """Models srcu_gp_is_expedited(): is the current or an upcoming grace period expedited?"""
    return ssp.srcu_gp_seq < ssp.srcu_gp_seq_needed_exp


def srcu_get_delay(ssp: SrcuStruct) -> int:
    """Models srcu_get_delay(): 0 if an expedited grace period is pending (unless it has polled
    ``srcu_max_nodelay_phase`` times, a limit that depends on HZ), else SRCU_INTERVAL; plus the grace
    period's age in jiffies beyond the first, capped at SRCU_MAX_INTERVAL."""
    jbase = 0 if srcu_gp_is_expedited(ssp) else SRCU_INTERVAL
    if rcu_seq_state(ssp.srcu_gp_seq):
        j = ssp.sim.jiffies - 1
        if j > ssp.srcu_gp_start:
            jbase += j - ssp.srcu_gp_start
        if not jbase:
            ssp.srcu_n_exp_nodelay += 1
            if ssp.srcu_n_exp_nodelay > ssp.srcu_max_nodelay_phase:
                jbase = 1
    return min(jbase, SRCU_MAX_INTERVAL)


def srcu_gp_start(ssp: SrcuStruct) -> None:
    """Models srcu_gp_start(): record the start jiffy and move the sequence to SCAN1."""
    assert ssp.srcu_gp_seq < ssp.srcu_gp_seq_needed, "srcu_gp_start() with no grace period needed"
    ssp.srcu_gp_start = ssp.sim.jiffies
    ssp.srcu_n_exp_nodelay = 0
    ssp.srcu_gp_seq += 1  # rcu_seq_start()
    assert rcu_seq_state(ssp.srcu_gp_seq) == SRCU_STATE_SCAN1
    ends_at = (ssp.srcu_gp_seq | RCU_SEQ_STATE_MASK) + 1
    ssp.grace_periods.append(GracePeriod(seq=ssp.srcu_gp_seq, start=ssp.sim.now,
                                         request=ssp.gp_requests.get(ends_at)))


def srcu_schedule_cbs_sdp(ssp: SrcuStruct, delay: int) -> None:
    """Models srcu_schedule_cbs_sdp() / srcu_queue_delayed_work_on(): invoke callbacks now (a work
    item) or after ``delay`` jiffies (``timer_reduce()`` on the per-CPU delay timer)."""
    if not delay:
        ssp.sdp_work.queue_work()
    else:
        ssp.sdp_delay_work.timer_reduce(ssp.sim.jiffies + delay)


def _snp_seq_at_least(seq: int, s: int) -> bool:
    """A node's recorded sequence covers ``s`` (and is not the SRCU_SNP_INIT_SEQ placeholder)."""
    return seq != SRCU_SNP_INIT_SEQ and seq >= s


def srcu_funnel_exp_start(ssp: SrcuStruct, s: int, path: list[SrcuNode] | None = None) -> None:
    """Models srcu_funnel_exp_start(): record, up the funnel ``path`` (BIG) and at the top, that grace
    period ``s`` must be expedited; a node that already records it ends the climb. Note what it does
    *not* do: touch the delayed work that is already waiting on its timer."""
    for snp in path or []:
        if rcu_seq_done(ssp.srcu_gp_seq, s) or _snp_seq_at_least(snp.srcu_gp_seq_needed_exp, s):
            return
        snp.srcu_gp_seq_needed_exp = s
    if ssp.srcu_gp_seq_needed_exp < s:
        ssp.srcu_gp_seq_needed_exp = s


def srcu_funnel_gp_start(ssp: SrcuStruct, s: int, do_norm: bool) -> None:
    """Models srcu_funnel_gp_start(): record the need for grace period ``s`` (expedited unless
    ``do_norm``) and, if SRCU is idle, start it and queue ``process_srcu`` with a delay of
    ``!!srcu_get_delay()`` jiffies: 1 for a normal grace period, 0 for an expedited one.

    6.18 calls queue_delayed_work() here directly. 7.0 defers it to an irq_work (Boqun Feng's fix of
    the srcu_usage.lock -> pool->lock dependency, Mar 2026) that computes the same delay when it runs;
    on x86 the irq_work runs at once through a self-IPI, so the timing is the same.

    BIG: first climb the funnel path; a node whose ``srcu_have_cbs`` already covers ``s`` ends the
    climb (a later grace period recorded at the leaf schedules this CPU's callbacks instead, and an
    expedited request is passed on to srcu_funnel_exp_start()).
    """
    idx = (s >> RCU_SEQ_CTR_SHIFT) % 4
    for i, snp in enumerate(ssp.funnel_path):
        snp_seq = snp.srcu_have_cbs[idx]
        if _snp_seq_at_least(snp_seq, s):
            if i == 0 and snp_seq != s:
                srcu_schedule_cbs_sdp(ssp, SRCU_INTERVAL if do_norm else 0)
                return
            if not do_norm:
                srcu_funnel_exp_start(ssp, s, ssp.funnel_path[i:])
            return
        snp.srcu_have_cbs[idx] = s
        if not do_norm and not _snp_seq_at_least(snp.srcu_gp_seq_needed_exp, s):
            snp.srcu_gp_seq_needed_exp = s
    if ssp.srcu_gp_seq_needed < s:
        ssp.srcu_gp_seq_needed = s
    if not do_norm and ssp.srcu_gp_seq_needed_exp < s:
        ssp.srcu_gp_seq_needed_exp = s
    if not rcu_seq_done(ssp.srcu_gp_seq, s) and rcu_seq_state(ssp.srcu_gp_seq) == SRCU_STATE_IDLE:
        srcu_gp_start(ssp)
        ssp.work.queue_delayed_work(1 if srcu_get_delay(ssp) else 0)


def srcu_gp_start_if_needed(ssp: SrcuStruct, cb: SrcuCallback | None, do_norm: bool, call: str = "") -> int:
    """Models srcu_gp_start_if_needed(): queue ``cb`` for the grace period after now and make sure
    that grace period is requested (and expedited, unless ``do_norm``). Returns the snapshot ``s``.
    ``call`` names the SRCU API the caller used, for attribution (the first request for ``s`` is
    recorded with ``ssp.caller``).

    The read lock the kernel takes around this (against sequence wrap) is left out.
    """
    s = rcu_seq_snap(ssp.srcu_gp_seq)
    if s not in ssp.gp_requests:
        ssp.gp_requests[s] = GpRequest(ssp.caller, call, ssp.sim.now, not do_norm)
    if cb is not None:
        cb.seq = s
        ssp.srcu_cblist.append(cb)
    needgp = needexp = False
    if ssp.sdp_srcu_gp_seq_needed < s:
        ssp.sdp_srcu_gp_seq_needed = s
        needgp = True
    if not do_norm and ssp.sdp_srcu_gp_seq_needed_exp < s:
        ssp.sdp_srcu_gp_seq_needed_exp = s
        needexp = True
    if needgp:
        srcu_funnel_gp_start(ssp, s, do_norm)
    elif needexp:
        srcu_funnel_exp_start(ssp, s, ssp.funnel_path)
    return s


def __call_srcu(ssp: SrcuStruct, func: Callable[[], None], name: str, do_norm: bool,
                call: str = "call_srcu") -> SrcuCallback:
    """Models __call_srcu(); ``call`` is the API the caller used (for attribution)."""
    cb = SrcuCallback(seq=0, func=func, name=name)
    srcu_gp_start_if_needed(ssp, cb, do_norm, call)
    return cb


def call_srcu(ssp: SrcuStruct, func: Callable[[], None], name: str = "callback") -> SrcuCallback:
    """Models call_srcu(): run ``func`` after a *normal* grace period. On an idle srcu_struct this
    starts that grace period and arms ``process_srcu`` one jiffy out."""
    return __call_srcu(ssp, func, name, do_norm=True)


def call_srcu_expedited(ssp: SrcuStruct, func: Callable[[], None], name: str = "callback") -> SrcuCallback:
    """Models call_srcu_expedited() (Sean Christopherson, "[RFC PATCH 2/3] srcu: Add and export
    call_srcu_expedited() to avoid transferring grace periods", Mar 9 2026): the same, but the grace
    period is expedited, so ``process_srcu`` is queued with no delay."""
    return __call_srcu(ssp, func, name, do_norm=False, call="call_srcu_expedited")


def __synchronize_srcu(ssp: SrcuStruct, do_norm: bool) -> None:
    """Models __synchronize_srcu(): queue a wake-me callback and wait for it (the caller blocks). The
    wait is recorded (``ssp.waits``) for attribution."""
    call = "synchronize_srcu" + ("" if do_norm else "_expedited")
    done = Completion(ssp.sim)
    start = ssp.sim.now
    cb = __call_srcu(ssp, done.complete, "wakeme_after_rcu", do_norm, call)
    done.wait(call)
    ssp.waits.append(SrcuWait(ssp.caller, call, cb.seq, start, ssp.sim.now))


def synchronize_srcu_expedited(ssp: SrcuStruct) -> None:
    """Models synchronize_srcu_expedited(): wait for an expedited grace period. If a normal grace
    period is already in flight, the snapshot asks for the one *after* it, and that one cannot start
    before the in-flight one ends: the delayed work's timer decides when that is."""
    __synchronize_srcu(ssp, do_norm=False)


def srcu_should_expedite(ssp: SrcuStruct) -> bool:
    """Models srcu_should_expedite() (kernel/rcu/srcutree.c, v6.18): "likely idle" unless the calling
    CPU has seen SLOWGP (srcu_read_lock_fast()) readers; or the calling CPU's *own* srcu_data has
    callbacks still waiting for a grace period (it looks at no other CPU's list, so the caller does not
    see a SMALL srcu_struct's callbacks, all on the boot CPU's srcu_data, unless it runs there); or the
    last grace period ended less than exp_holdoff ago; or a grace period is needed that has not ended.
    The kernel's second read of the sequence (a grace period ending between the two) cannot differ in
    the model, which does nothing between them."""
    cpu = ssp.sim.cpu
    if ssp.srcu_reader_flavor.get(cpu, 0) & SRCU_READ_FLAVOR_SLOWGP:
        return False
    if cpu == ssp.sdp_cpu and any(not rcu_seq_done(ssp.srcu_gp_seq, cb.seq) for cb in ssp.srcu_cblist):
        return False  # rcu_segcblist_pend_cbs(): callbacks not yet ready to invoke
    t = ssp.sim.now
    if EXP_HOLDOFF_NS == 0 or ssp.srcu_last_gp_end <= t < ssp.srcu_last_gp_end + EXP_HOLDOFF_NS:
        return False
    return not ssp.srcu_gp_seq < ssp.srcu_gp_seq_needed


def synchronize_srcu(ssp: SrcuStruct) -> None:
    """Models synchronize_srcu(): expedited when SRCU looks idle, else a normal grace period."""
    if srcu_should_expedite(ssp):
        synchronize_srcu_expedited(ssp)
    else:
        __synchronize_srcu(ssp, do_norm=True)


def try_check_zero(ssp: SrcuStruct, idx: int, trycount: int) -> bool:
    """Models try_check_zero(): scan ``idx`` up to ``trycount`` times (one more when expedited),
    ``udelay(srcu_retry_check_delay)`` between scans."""
    curdelay = 0 if srcu_get_delay(ssp) else 1
    while True:
        if srcu_readers_active_idx_check(ssp, idx):
            return True
        trycount -= 1
        if trycount + curdelay <= 0:
            return False
        ssp.sim.spend(SRCU_RETRY_CHECK_DELAY_US * 1000)


def srcu_flip(ssp: SrcuStruct) -> None:
    """Models srcu_flip(): new readers use the other index."""
    ssp.look_at_readers()  # sections begun before the flip are on the old index
    ssp.srcu_ctrp ^= 1


def srcu_gp_end(ssp: SrcuStruct) -> None:
    """Models srcu_gp_end(): end the grace period, schedule its callbacks (at once if a grace period
    is expedited, else one jiffy later), and start the next grace period at once if one is needed."""
    sim = ssp.sim
    sim.spend(sim.costs.gp_end)
    assert rcu_seq_state(ssp.srcu_gp_seq) == SRCU_STATE_SCAN2
    cbdelay = 0 if srcu_gp_is_expedited(ssp) else 1
    ssp.srcu_last_gp_end = sim.now
    ssp.srcu_gp_seq = (ssp.srcu_gp_seq | RCU_SEQ_STATE_MASK) + 1  # rcu_seq_end()
    gpseq = ssp.srcu_gp_seq
    gp = ssp.grace_periods[-1]
    gp.end, gp.expedited_at_end = sim.now, cbdelay == 0
    if ssp.srcu_gp_seq_needed_exp < gpseq:
        ssp.srcu_gp_seq_needed_exp = gpseq
    for snp in ssp.funnel_path:  # BIG: each node marks the grace period done (state 1)
        snp.srcu_have_cbs[(gpseq >> RCU_SEQ_CTR_SHIFT) % 4] = gpseq | 1
        if not _snp_seq_at_least(snp.srcu_gp_seq_needed_exp, gpseq):
            snp.srcu_gp_seq_needed_exp = gpseq
    srcu_schedule_cbs_sdp(ssp, cbdelay)
    if not rcu_seq_state(gpseq) and gpseq < ssp.srcu_gp_seq_needed:
        srcu_gp_start(ssp)
        srcu_reschedule(ssp, 0)


def srcu_advance_state(ssp: SrcuStruct) -> None:
    """Models srcu_advance_state(): push the grace period through SCAN1 and SCAN2 as far as the
    readers allow; a scan that still sees readers returns, to be retried by process_srcu."""
    if rcu_seq_state(ssp.srcu_gp_seq) == SRCU_STATE_IDLE:
        if ssp.srcu_gp_seq >= ssp.srcu_gp_seq_needed:
            return
        srcu_gp_start(ssp)
    if rcu_seq_state(ssp.srcu_gp_seq) == SRCU_STATE_SCAN1:
        idx = ssp.srcu_ctrp ^ 1
        if not try_check_zero(ssp, idx, 1):
            return  # readers present, retry later
        srcu_flip(ssp)
        ssp.srcu_gp_seq = (ssp.srcu_gp_seq & ~RCU_SEQ_STATE_MASK) | SRCU_STATE_SCAN2
        ssp.srcu_n_exp_nodelay = 0
    if rcu_seq_state(ssp.srcu_gp_seq) == SRCU_STATE_SCAN2:
        idx = ssp.srcu_ctrp ^ 1
        if not try_check_zero(ssp, idx, 2):
            return
        ssp.srcu_n_exp_nodelay = 0
        srcu_gp_end(ssp)


def srcu_reschedule(ssp: SrcuStruct, delay: int) -> None:
    """Models srcu_reschedule(): go idle if every request is met, else (re)queue process_srcu."""
    pushgp = True
    if ssp.srcu_gp_seq >= ssp.srcu_gp_seq_needed:
        if not rcu_seq_state(ssp.srcu_gp_seq):
            pushgp = False
    elif not rcu_seq_state(ssp.srcu_gp_seq):
        srcu_gp_start(ssp)
    if pushgp:
        ssp.work.queue_delayed_work(delay)


def process_srcu(ssp: SrcuStruct) -> None:
    """Models process_srcu(), the workqueue function that drives grace periods."""
    srcu_advance_state(ssp)
    curdelay = srcu_get_delay(ssp)
    if curdelay:
        ssp.reschedule_count = 0
    else:
        j = ssp.sim.jiffies
        if ssp.reschedule_jiffies == j:
            ssp.reschedule_count += 1
            if ssp.reschedule_count > ssp.srcu_max_nodelay:
                curdelay = 1
        else:
            ssp.reschedule_count = 1
            ssp.reschedule_jiffies = j
    srcu_reschedule(ssp, curdelay)


def srcu_invoke_callbacks(ssp: SrcuStruct) -> None:
    """Models srcu_invoke_callbacks(): run every callback whose grace period has ended, in order."""
    if ssp.srcu_cblist_invoking:
        return
    ready = [cb for cb in ssp.srcu_cblist if rcu_seq_done(ssp.srcu_gp_seq, cb.seq)]
    if not ready:
        return
    ssp.srcu_cblist_invoking = True
    ssp.srcu_cblist = [cb for cb in ssp.srcu_cblist if not rcu_seq_done(ssp.srcu_gp_seq, cb.seq)]
    for cb in ready:
        ssp.sim.spend(ssp.sim.costs.callback)
        if ssp.cleaned_up and ssp.on_callback_after_cleanup is not None:
            ssp.on_callback_after_cleanup(cb)
        cb.func()
        ssp.callbacks_invoked += 1
    ssp.srcu_cblist_invoking = False
    if any(rcu_seq_done(ssp.srcu_gp_seq, cb.seq) for cb in ssp.srcu_cblist):
        srcu_schedule_cbs_sdp(ssp, 0)


def srcu_barrier(ssp: SrcuStruct) -> None:
    """Models srcu_barrier(): wait until every callback already queued has run. It starts no grace
    period: the barrier callback rides on the grace period of the last queued callback
    (rcu_segcblist_entrain()), and with nothing queued it returns at once."""
    if not ssp.srcu_cblist:
        return
    done = Completion(ssp.sim)
    seq, start = ssp.srcu_cblist[-1].seq, ssp.sim.now
    ssp.srcu_cblist.append(SrcuCallback(seq=seq, func=done.complete, name="srcu_barrier_cb"))
    done.wait("srcu_barrier")
    ssp.waits.append(SrcuWait(ssp.caller, "srcu_barrier", seq, start, ssp.sim.now))


def cleanup_srcu_struct(ssp: SrcuStruct) -> bool:
    """Models cleanup_srcu_struct(), with its warnings. Returns False where the kernel would WARN and
    leak the structure ("Forgot srcu_barrier(), so just leak it!")."""
    if not srcu_get_delay(ssp):
        ssp.warn("cleanup_srcu_struct", "expedited grace period pending")
        return False
    if srcu_readers_active(ssp):
        ssp.warn("cleanup_srcu_struct", "active SRCU readers")
        return False
    ssp.work.flush()
    ssp.sdp_delay_work.delete()
    if ssp.sdp_work.pending:
        runs = ssp.sdp_work.runs
        ssp.sim.wait_for(lambda: ssp.sdp_work.runs > runs, "flush_work(srcu_invoke_callbacks)")
    if ssp.srcu_cblist:
        ssp.warn("cleanup_srcu_struct", f"{len(ssp.srcu_cblist)} callbacks still queued: "
                 "forgot srcu_barrier(), so just leak it")
        ssp.cleaned_up = True  # the memory around it is freed by the caller all the same
        return False
    if rcu_seq_state(ssp.srcu_gp_seq) != SRCU_STATE_IDLE or ssp.srcu_gp_seq != ssp.srcu_gp_seq_needed:
        ssp.warn("cleanup_srcu_struct", "grace period in flight")
        ssp.cleaned_up = True
        return False
    ssp.cleaned_up = True
    return True
