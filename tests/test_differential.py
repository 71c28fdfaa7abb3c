"""The differential harness: its generator and mode-by-mode comparison (kernel_model.differential), and
a few cases on real KVM (minivmm.timing.differential). No host timing is asserted: only that every
grace-period step is compared both ways."""

from __future__ import annotations

import random

import pytest

from kernel_model import differential
from kernel_model.sequences import parse_sequence
from minivmm.timing.runner import check_runnable

TICK = 4_000_000


def test_generated_sequences_are_reproducible_and_runnable():
    ra, rb = random.Random(7), random.Random(7)
    a = [differential.generate(ra, f"c{i}") for i in range(30)]
    b = [differential.generate(rb, f"c{i}") for i in range(30)]
    assert a == b
    ops = set()
    for i, text in enumerate(a):
        seq = parse_sequence(text, f"c{i}")
        check_runnable(seq, "pvm")
        ops |= {s.op for s in seq.steps}
    assert {"ioeventfd", "memslot", "vcpu"} <= ops


def test_grace_period_steps_are_memslot_changes_deregistrations_and_the_apic_page():
    seq = parse_sequence("create_vm\nirqchip\nioeventfd addr=0xd0000050 len=4\nvcpu id=0\n"
                         "ioeventfd_deassign addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n"
                         "vcpu id=1\n", "t")
    assert differential.waits_for_gp(seq, "pvm") == [1, 4, 5]
    assert differential.waits_for_gp(seq, "vmx") == [1, 3, 4, 5]


def test_paired_model_uses_each_repetitions_gaps():
    seq = parse_sequence("create_vm\nioeventfd addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n", "t")
    short = differential.model_paired(seq, [[10_000, 10_000, 10_000, 10_000]] * 50, 250, "pvm", None, 2, 1)[2]
    long = differential.model_paired(seq, [[10_000, 10_000, 8_500_000, 10_000]] * 50, 250, "pvm", None, 2, 1)[2]
    assert min(short) > 4_000_000 > 1_000_000 > max(long)  # after a 2-jiffy pause the grace period is over


def test_paired_model_holds_the_steps_it_does_not_test_to_the_hosts_durations():
    # A vCPU's creation between the registration and the memslot: the memslot's wait depends on how long
    # the host's vCPU creation really took, not on the model's fixed cost for it.
    seq = parse_sequence("create_vm\nioeventfd addr=0xd0000050 len=4\nvcpu id=0\nmemslot slot=0 base=0 size=2M\n",
                         "t")
    gaps = [[10_000] * 5] * 50
    own = differential.model_paired(seq, gaps, 250, "pvm", None, 1, 3)
    slow_vcpu = [[250_000, 2_000, 1_500_000, 0, 0]] * 50
    held = differential.model_paired(seq, gaps, 250, "pvm", None, 1, 3, slow_vcpu)
    assert set(held[2]) == {1_500_000}  # held to the host's duration
    assert set(held[1]) == {2_000} and set(held[0]) == {250_000}
    assert held[3] != own[3]  # the waiting step is still the model's: it starts later and ends at its tick
    same_phase = [o - h for o, h in zip(own[3], held[3]) if abs(o - h) < 2_000_000]
    assert same_phase and all(1_000_000 < d < 1_500_000 for d in same_phase)


def test_a_held_step_the_model_runs_longer_than_the_host_comes_off_the_next_gap():
    from kernel_model.predict import simulate_once
    seq = parse_sequence("create_vm\nvcpu id=0\nvcpu id=1\n", "t")
    own, kvm = simulate_once(seq, "call_srcu", 250, "pvm", 0.3, random.Random(1))
    end_own = kvm.sim.now
    fast = [1_000, 1_000, None, None]  # the host's KVM_CREATE_VM and first vCPU far faster than the model's
    held, kvm = simulate_once(seq, "call_srcu", 250, "pvm", 0.3, random.Random(1), held_ns=fast)
    assert held[0] == own[0] and held[1] == own[1]  # the model cannot run a step faster than its own cost
    # ...so the gaps after them are taken up by the excess (here both, the excess being far larger)
    start_last_own = end_own - own[-1] - own[-2] - seq.steps[-1].gap_ns
    start_last_held = kvm.sim.now - held[-1] - held[-2]  # the last gap is taken up too
    assert start_last_own - start_last_held == seq.steps[1].gap_ns + seq.steps[2].gap_ns


def test_a_replayed_run_starts_each_step_where_the_host_did_or_when_the_model_is_done():
    from kernel_model.predict import simulate_once
    seq = parse_sequence("create_vm\nioeventfd addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n", "t")
    starts = [5_000, 700_000, 1_500_000, 9_500_000]  # the teardown after the memslot's wait
    durations, kvm = simulate_once(seq, "call_srcu", 250, "pvm", 0.5, random.Random(1), starts_ns=starts)
    assert kvm.sim.now == starts[-1] + durations[-1]
    late, kvm = simulate_once(seq, "call_srcu", 250, "pvm", 0.5, random.Random(1),
                              starts_ns=[5_000, 700_000, 1_500_000, 1_600_000])  # while the memslot still waits
    assert late[:3] == durations[:3]
    assert kvm.sim.now == 1_500_000 + late[2] + late[3]  # the teardown right after the memslot's wait


def test_a_replayed_waiters_drawn_latency_counts_in_its_step_but_does_not_hold_up_the_next():
    # Every timer-ended waiter switched in a tick late (a profile's draw). Replayed, the host's caller
    # issued its next registration 100 us after the memslot's grace period ended (its waiter was not
    # late): the memslot still counts the tick, and the registration and the memslot after it meet the
    # host's situation, as in the run without the latency.
    from kernel_model.costs import Costs
    from kernel_model.predict import simulate_once
    seq = parse_sequence("create_vm\nioeventfd addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n"
                         "ioeventfd addr=0xd0001050 len=4\nmemslot slot=1 base=0x10000000 size=2M\n", "t")
    late = Costs(timer_latency_samples=(TICK,))
    plain = Costs(timer_latency_samples=(0,))
    first = [5_000, 700_000, 1_500_000]
    own, _ = simulate_once(seq, "call_srcu", 250, "pvm", 0.5, random.Random(1), plain,
                           starts_ns=first + [30_000_000, 30_100_000, 60_000_000])
    nxt = first[2] + own[2] + 100_000
    starts = first + [nxt, nxt + 1_000_000, 60_000_000]
    a, _ = simulate_once(seq, "call_srcu", 250, "pvm", 0.5, random.Random(1), plain, starts_ns=starts)
    b, kvm = simulate_once(seq, "call_srcu", 250, "pvm", 0.5, random.Random(1), late, starts_ns=starts)
    assert a[2] == own[2] and b[2] == a[2] + TICK  # counted in the memslot's duration...
    assert b[4] == a[4] + TICK and b[3] == a[3]  # ...not in the next steps' situation (only their own waits)
    # Not replayed, the caller is held up by it: the next steps begin a tick later.
    c, _ = simulate_once(seq, "call_srcu", 250, "pvm", 0.5, random.Random(1), late)
    d, _ = simulate_once(seq, "call_srcu", 250, "pvm", 0.5, random.Random(1), plain)
    assert c[2] == d[2] + TICK


def test_a_replayed_waiter_waits_for_its_cpu_as_long_as_the_hosts_caller_did():
    # A profile whose timer-ended waiters are on time or a tick late, and a waiter that ran before its
    # wait (waiter_tick_wait: always the next tick). With the host caller's wake-ups traced, neither
    # late part is drawn (an on-time draw, 0 here, still is): the memslot's waiter takes the host's
    # latency for its step (less the model's own wake-up cost), and one the host's caller did not sleep
    # through takes none.
    from kernel_model.costs import Costs
    from kernel_model.predict import simulate_once
    seq = parse_sequence("create_vm\nioeventfd addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n", "t")
    plain = Costs(timer_latency_samples=(0,))
    late = Costs(timer_latency_samples=(0, TICK), waiter_tick_wait=(1, 1.0))
    starts = [5_000, 700_000, 1_500_000, 30_000_000]

    def memslot(costs: Costs, wakeups: list[tuple[int, ...]] | None) -> int:
        return simulate_once(seq, "call_srcu", 250, "pvm", 0.5, random.Random(1), costs, starts_ns=starts,
                             wakeups_ns=wakeups)[0][2]
    own = memslot(plain, None)
    assert memslot(late, None) > own + TICK // 2  # drawn: the next tick at least
    assert memslot(late, [(), (), (300_000,), ()]) == own + 300_000 - late.wakeup
    assert memslot(late, [(), (), (), ()]) == own
    assert memslot(late, [(), (), (2_000,), ()]) == own  # within the model's own wake-up cost


def test_only_a_profiled_model_replays_the_hosts_wake_ups_and_it_can_be_told_not_to():
    from kernel_model.costs import Costs
    seq = parse_sequence("create_vm\nioeventfd addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n", "t")
    starts = [5_000, 700_000, 1_500_000, 30_000_000]
    slow = differential.HostTimeline(0.5, starts, wakeups_ns=[(), (), (1_000_000,), ()])
    quick = differential.HostTimeline(0.5, starts, wakeups_ns=[(), (), (), ()])
    gaps = [[10_000] * 4]
    profile = Costs(timer_latency_samples=(0,))
    a = differential.model_paired(seq, gaps, 250, "pvm", profile, 1, 1, None, [slow])[2]
    b = differential.model_paired(seq, gaps, 250, "pvm", profile, 1, 1, None, [quick])[2]
    assert a[0] == b[0] + 1_000_000 - profile.wakeup
    drawn = differential.model_paired(seq, gaps, 250, "pvm", profile, 1, 1, None, [slow], replay_wakeups=False)[2]
    assert drawn == b
    # The model without a profile is a quiet host's: the host's wake-ups are not its.
    assert (differential.model_paired(seq, gaps, 250, "pvm", None, 1, 1, None, [slow])
            == differential.model_paired(seq, gaps, 250, "pvm", None, 1, 1, None, [quick]))


def test_host_timelines_take_each_steps_wake_ups_of_the_caller_from_its_start_to_its_end():
    from minivmm.timing.differential import host_timelines
    from minivmm.timing.runner import Repetition
    from minivmm.timing.ticktrace import TickRecord
    tick, origin = 4_000_000, 1_000 * 4_000_000
    rec = TickRecord(tick, ticks={0: [k * tick + 3_000 for k in range(990, 1010)]})
    # Step 0 from 0 to 50 us, a sleep (the gap: its own wake-up), step 1 from 3 ms to 9 ms.
    rep = Repetition([50_000, 6_000_000], [0, 2_950_000], [None, None], origin_ns=origin,
                     starts_ns=[0, 3_000_000], ends_ns=[50_000, 9_000_000])
    rec.woken = {42: [origin + 2_990_000, origin + 8_000_000]}
    rec.switched_in = {42: [origin + 2_991_000, origin + 8_004_000]}
    (line,) = host_timelines([rep], rec, 250, caller=42) or []
    assert line.wakeups_ns == [(), (4_000,)]
    (other,) = host_timelines([rep], rec, 250, caller=7) or []  # a thread whose wake-ups were not traced
    assert other.wakeups_ns is None
    old = Repetition(rep.durations_ns, rep.gaps_ns, rep.records, origin_ns=origin, starts_ns=rep.starts_ns)
    (no_ends,) = host_timelines([old], rec, 250, caller=42) or []
    assert no_ends.wakeups_ns is None


def test_a_replayed_run_on_a_host_cpu_the_models_host_lacks_draws_its_cpu():
    seq = parse_sequence("create_vm\nioeventfd addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n", "t")
    line = differential.HostTimeline(0.3, [5_000, 700_000, 1_500_000, 9_500_000], caller_cpu=7)
    runs = differential.model_paired(seq, [[10_000] * 4], 250, "pvm", None, 2, 1, None, [line])
    assert len(runs[2]) == 2  # a 2-CPU model host: CPU 7 is not one of its CPUs, and no error


def test_a_replayed_run_arms_the_timer_for_the_tick_the_hosts_phase_gives():
    # The registration at 700 us after the run's start: 100 us before a tick at one phase, 100 us after
    # it at another. The memslot, started at the same host time, ends a tick later in the second.
    from kernel_model.predict import simulate_once
    seq = parse_sequence("create_vm\nioeventfd addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n", "t")
    starts = [5_000, 700_000, 1_500_000, 20_000_000]
    tick = 4_000_000
    before = 1 - 800_000 / tick  # the run begins 800 us before a tick: the registration 100 us before it
    after = 1 - 600_000 / tick   # ... 600 us before: the registration 100 us after it
    a = simulate_once(seq, "call_srcu", 250, "pvm", before, random.Random(1), starts_ns=starts)[0][2]
    b = simulate_once(seq, "call_srcu", 250, "pvm", after, random.Random(1), starts_ns=starts)[0][2]
    assert abs((b - a) - tick) < 300_000


def test_host_timelines_put_each_repetition_on_the_traced_tick_grid():
    from minivmm.timing.differential import host_timelines
    from minivmm.timing.runner import Repetition
    from minivmm.timing.ticktrace import TickRecord, grace_period_fates
    tick = 4_000_000
    offset = 1_234_000
    # The grid is where the tick handlers run (jiffies moves there), a few us after the hrtimer's tick.
    rec = TickRecord(tick, ticks={0: [offset + k * tick + 3_000 for k in range(1000, 1100)]})
    reps = [Repetition([1, 1], [1, 1], [None, None], origin_ns=offset + 3_000 + 1050 * tick + share * tick // 4,
                       starts_ns=[7, 900_000]) for share in range(4)]
    lines = host_timelines(reps, rec, 250)
    assert lines is not None
    assert [round(line.phase, 3) for line in lines] == [0.0, 0.25, 0.5, 0.75]
    assert all(line.starts_ns == [7, 900_000] and line.caller_cpu is None for line in lines)
    assert host_timelines(reps, None, 250) is None
    # The caller's CPU: where the thread armed the repetition's first grace-period timer (a delayed work
    # minutes ahead, as KVM_CREATE_VM arms, says nothing and is passed over).
    first = offset + 3_000 + 1050 * tick
    rec.armed = {1: [(first + 10, 0, 77, 1050 + 75_000, 1050)],
                 2: [(first + 20, 1, 77, 1052, 1050)],
                 3: [(first + tick // 4 + 5, 0, 99, 1052, 1050)]}  # another thread's
    cpus = [line.caller_cpu for line in host_timelines(reps, rec, 250, grace_period_fates(rec, [77], 2)) or []]
    assert cpus == [1, None, None, None]
    with pytest.raises(ValueError):
        host_timelines(reps, rec, 100)


def test_a_step_is_compared_mode_by_mode_with_the_host_against_itself_beside():
    rng = random.Random(4)

    def runs(n: int, slip: float) -> list[int]:
        return [int(rng.uniform(4.1e6, 8.0e6)) + (TICK if rng.random() < slip else 0) for _ in range(n)]

    host = runs(300, 0.08)
    agree = differential.compare_step("c", 3, "KVM_SET_USER_MEMORY_REGION", host, runs(900, 0.08), TICK)
    assert agree.ok and agree.host_vs_host.ok
    assert len(agree.model_vs_host.shares_ok) == 2  # the on-time mode and the slipped one
    never_slips = differential.compare_step("c", 3, "x", host, runs(900, 0.0), TICK)
    assert not never_slips.ok and never_slips.model_vs_host.shares_ok[1] is False
    s = differential.summarize([agree, never_slips])
    assert s["steps"] == 2 and s["within"] == 1 and len(s["misses"]) == 1
    assert s["misses"][0]["model_vs_host"]["shares"][1][1] == 0.0
    assert s["wakeups_replayed_steps"] == 0
    # The model with the host's wake-ups replayed, and drawing them: both reported.
    both = differential.compare_step("c", 3, "x", host, runs(900, 0.08), TICK, drawn=runs(900, 0.0))
    s = differential.summarize([both, agree])
    assert (s["within"], s["wakeups_replayed_steps"], s["drawn_wakeups_within"]) == (2, 1, 0)
    assert both.to_json()["drawn_wakeups_vs_host"]["ok"] is False


@pytest.mark.kvm
def test_a_few_cases_on_the_host():
    from minivmm.timing.differential import run_case
    rng = random.Random(3)
    results = []
    for c in range(3):
        text = differential.generate(rng, f"k{c}")
        res, profile, pairing = run_case(f"k{c}", text, 12, 250, "pvm", None, 2, c, trace_ticks=False)
        assert profile is None and pairing == "not asked to"
        seq = parse_sequence(text, f"k{c}")
        assert [r.step for r in res] == differential.waits_for_gp(seq, "pvm")
        results += res
    assert results
    for r in results:
        assert len(r.host) == 12 and len(r.model) == 24 and r.fixed_vs_host is None
        assert sum(r.model_vs_host.a.shares) == pytest.approx(1.0)
    s = differential.summarize(results)
    assert s["steps"] == len(results) and 0 <= s["within"] <= s["steps"]
    assert len(s["misses"]) == s["steps"] - s["within"]


def test_traced_runs_are_compared_over_the_set_up_they_all_share():
    from kernel_model.sequences import Step
    from minivmm.timing.differential import TracedRun, common_setup, step_key
    from minivmm.timing.runner import Repetition

    def run(*steps: Step) -> TracedRun:
        seq = parse_sequence("create_vm\n", "t")
        seq = type(seq)("t", "", steps)
        return TracedRun(seq, Repetition([1] * len(steps), [0] * len(steps), [None] * len(steps)), frozenset({1}))
    vm, mem = Step("create_vm"), Step("memslot", {"slot": 0, "base": 0, "size": 1 << 21})
    # An unmodelled ioctl's measured cost differs from run to run; it is still the same step.
    a, b = Step("ioctl", {"name": "KVM_CHECK_EXTENSION", "cost": 900}), Step("ioctl", {"name": "KVM_CHECK_EXTENSION",
                                                                                    "cost": 300})
    assert step_key(a) == step_key(b) and step_key(a) != step_key(Step("ioctl", {"name": "KVM_GET_API_VERSION"}))
    assert step_key(mem) != step_key(Step("memslot", {"slot": 1, "base": 0, "size": 1 << 21}))
    # One run's guest firmware moved a memslot before its last vCPU ran: the runs share the steps before.
    runs = [run(vm, a, mem, Step("vcpu", {"id": 0})), run(vm, b, mem, mem, Step("vcpu", {"id": 0})),
            run(vm, a, mem, Step("vcpu", {"id": 0}))]
    assert common_setup(runs) == 3
    assert common_setup(runs[::2]) == 4 and common_setup([]) == 0


@pytest.mark.kvm
def test_a_traced_programs_set_up_is_compared_with_the_model(trace_prog: str):
    from minivmm.timing.differential import run_program
    # tests/trace_prog.c "3 0": a VM, three ioeventfds, a memslot (it stalls on this host's kernel).
    out = run_program("prog", [trace_prog, "3", "0"], 6, 250, "pvm", None, 2, 1, trace_ticks=False)
    res, profile, pairing = out.case
    assert profile is None and pairing == "not asked to"
    assert out.steps_shared == out.steps_longest >= 5
    memslots = [r for r in res if r.label.startswith("KVM_SET_USER_MEMORY_REGION")]
    assert len(memslots) == 1 and len(memslots[0].host) == 6 and len(memslots[0].model) == 12
    assert memslots[0].to_json()["step"] == memslots[0].step + 1  # reports number steps from 1


def test_a_traced_case_is_replayed_with_its_own_ticks_and_the_profiles_duty():
    from kernel_model.tick import TickEnvironment
    from minivmm.timing.differential import case_environment
    from minivmm.timing.ticktrace import TickRecord, grace_period_fates
    tick, offset = 4_000_000, 30_000
    # Both CPUs ran their handler at every tick; the caller (thread 42, CPU 0) armed one grace-period timer.
    rec = TickRecord(tick, ticks={0: [offset + k * tick + 5_000 for k in range(95, 106)],
                                  1: [offset + k * tick + 9_000 for k in range(95, 106)]},
                     armed={0xabc: [(offset + 100 * tick + 400_000, 0, 42, 1002, 1000)]},
                     expired={0xabc: [offset + 102 * tick + 20_000]})
    profile = TickEnvironment(other_tick_share=0.1, other_tick_persist=0.5, caller_tick_first=0.2,
                              other_holds_duty=0.3, other_first_slips=0.05, other_holds_duty_by_cpu=(0.25, None))
    env = case_environment(rec, grace_period_fates(rec, [42], 2), profile)
    assert env.other_tick_share == 1.0 and env.caller_tick_first == 1.0 and env.caller_on_boot_cpu == 1.0
    assert (env.other_holds_duty, env.other_first_slips, env.other_holds_duty_by_cpu) == (0.3, 0.05, (0.25, None))
    assert case_environment(rec, grace_period_fates(rec, [7], 2), profile) is profile  # another thread's timers
    # say nothing of this case


@pytest.mark.kvm
@pytest.mark.tracefs
def test_the_callers_wake_ups_are_traced_step_by_step_on_the_host():
    import threading

    from minivmm.host import read_host_info
    from minivmm.timing.differential import host_timelines, measure_traced
    hz = read_host_info().hz or 250
    seq = parse_sequence("create_vm\nioeventfd addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n", "t")
    reps, record, why_not = measure_traced(seq, 10, hz, 1)
    if record is None:
        pytest.skip(f"the ticks were not traced: {why_not}")
    lines = host_timelines(reps, record, hz, caller=threading.get_native_id())
    assert lines is not None and all(line.wakeups_ns is not None for line in lines)
    # The memslot waits for a grace period (its caller sleeps until woken); a registration does not.
    slept = [line.wakeups_ns[2] for line in lines if line.wakeups_ns and line.wakeups_ns[2]]
    assert len(slept) >= len(lines) // 2
    assert all(0 < w < 1_000_000_000 for ws in slept for w in ws)
    assert sum(len(line.wakeups_ns[1]) for line in lines if line.wakeups_ns) <= 1
