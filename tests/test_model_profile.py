"""Host profiles: the file format, the model drawing timer latencies from one, and the calibration's
arithmetic (tick grid, latency) on synthetic runs, without KVM."""

from __future__ import annotations

import dataclasses
import json
import random
import re

import pytest

from kernel_model.costs import Costs
from kernel_model.predict import predict
from kernel_model.profile import HostProfile, ProfileError, load_profile, quantile_points
from kernel_model.sequences import SEQUENCES
from kernel_model.sim import Sim
from kernel_model.tick import TickEnvironment, TracedTicks
from minivmm.timing.calibrate import (
    CalibrationError,
    CalibrationRun,
    TickGrid,
    estimate_tick_offset,
    model_chain_ns,
    resolved_latency,
    timer_latencies,
)

TICK = 4_000_000  # HZ=250


def profile(lat: list[int], hz: int = 250) -> HostProfile:
    return HostProfile(hz, "pvm", "6.18", "2026-11-22T00:00:00Z", (1.0, 1.0, 1.0), len(lat),
                       tuple(quantile_points(lat)))


def test_profile_round_trips_and_bad_files_are_one_line(tmp_path):
    p = profile([50_000, 60_000, 4_100_000])
    f = tmp_path / "p.json"
    f.write_text(json.dumps(p.to_json()))
    assert load_profile(str(f)) == p
    for bad in ("{", json.dumps({"format": "x"}), json.dumps({**p.to_json(), "timer_latency_ns": [3, 1]}),
                json.dumps({**p.to_json(), "hz": 0})):
        f.write_text(bad)
        with pytest.raises(ProfileError) as e:
            load_profile(str(f))
        assert "\n" not in str(e.value)
    with pytest.raises(ProfileError):
        load_profile(str(tmp_path / "missing.json"))


def test_sim_draws_timer_latency_from_the_profile():
    costs = profile([100_000] * 9 + [4_100_000]).costs()
    sim = Sim(250, 0.0, costs, random.Random(1))
    draws = [sim.draw(costs.timer_latency_samples) for _ in range(2000)]
    assert min(draws) >= 100_000 and max(draws) <= 4_100_000
    assert 0.05 < sum(d > 1_000_000 for d in draws) / len(draws) < 0.2
    assert sim.timer_latency() == 0  # the profile's latency is the waiter's, drawn when it wakes
    assert Sim(250).timer_latency() == Costs().timer_latency


def test_one_slow_calibration_run_keeps_its_weight():
    # 1 late run of 1000: the profile keeps every sample, and the model draws the late one about 1 time
    # in 1000, not the 1 in 200 of a 201-quantile table (whose top point it was).
    lat = [60_000 + k for k in range(999)] + [4_100_000]
    p = profile(lat)
    assert p.timer_latency_ns == tuple(sorted(lat))
    sim = Sim(250, 0.0, p.costs(), random.Random(3))
    draws = [sim.draw(p.costs().timer_latency_samples) for _ in range(100_000)]
    assert set(draws) <= set(lat)
    assert 0.0005 < sum(d > 1_000_000 for d in draws) / len(draws) < 0.002


def test_a_large_calibration_is_thinned_to_equal_mass_quantiles():
    # Each point is the middle of an equal share: no end point stands for half a share but is drawn
    # as often as the others (which would give a 1-in-10,000 run 5 times its weight).
    assert quantile_points(list(range(10_000)), 100) == [100 * k + 49 for k in range(100)]
    assert quantile_points([5, 1, 3]) == [1, 3, 5]
    lat = [60_000] * 9_999 + [4_100_000]
    assert max(quantile_points(lat)) == 60_000  # rarer than one point's share: not kept


def test_profile_moves_the_stall_past_the_timer_rule_maximum():
    seq = SEQUENCES["registrations-first"]
    i = next(k for k, s in enumerate(seq.steps) if s.op == "memslot")
    plain = predict(seq, "call_srcu", 250, "pvm", samples=300).steps[i].stats()
    late = predict(seq, "call_srcu", 250, "pvm", samples=300,
                   costs=profile([60_000] * 80 + [4_060_000] * 20).costs()).steps[i].stats()
    assert plain["max"] < 2 * TICK / 1000 < late["max"]
    assert late["p50"] >= plain["p50"]


def test_profile_rescales_whole_jiffies_to_another_hz():
    c = profile([100_000, 4_100_000]).costs(hz=100)
    assert c.timer_latency_samples[0] == 100_000
    assert c.timer_latency_samples[-1] == 10_100_000


def synthetic_runs(offset: int, lat: list[int], seed: int = 0) -> list[CalibrationRun]:
    rng = random.Random(seed)
    runs = []
    for k, extra in enumerate(lat):
        t_reg = 10**12 + k * 10 * TICK + rng.randrange(TICK)
        fire = ((t_reg - offset) // TICK + 2) * TICK + offset
        runs.append(CalibrationRun(t_reg, fire + extra))
    return runs


@pytest.mark.parametrize("offset", [0, 1_234_567, 3_999_000])
def test_tick_grid_and_latencies_are_recovered(offset):
    rng = random.Random(offset)
    lat = [rng.choice([40_000, 80_000, 300_000, 4_050_000]) for _ in range(400)]
    runs = synthetic_runs(offset, lat)
    est = estimate_tick_offset(runs, 250)
    assert min(abs(est - offset), TICK - abs(est - offset)) < 60_000
    got = timer_latencies(runs, 250, 0)
    assert sum(abs(g - x) < 80_000 for g, x in zip(got, lat)) / len(lat) > 0.95


def test_the_spun_runs_say_how_much_more_often_a_waiter_waits_for_the_tick():
    # Every other calibration run spins before its memslot; the ones that did ended a whole tick late
    # 30% of the time here, the others 5%: the profile keeps the difference, and the latency
    # distribution keeps only the runs that did not spin.
    from minivmm.timing.calibrate import CALLER_RUN_NS, estimate_tick_grid, spins, waiter_tick_wait
    rng = random.Random(5)
    lat = []
    for k in range(400):
        late = rng.random() < (0.30 if spins(k) else 0.05)
        lat.append(60_000 + (TICK if late else 0))
    runs = [dataclasses.replace(r, spun_ns=CALLER_RUN_NS if spins(k) else 0)
            for k, r in enumerate(synthetic_runs(0, lat))]
    grid = estimate_tick_grid(runs, 250)
    run_ns, extra = waiter_tick_wait(runs, 250, 0, grid) or (0, 0.0)
    assert run_ns == CALLER_RUN_NS and 0.15 < extra < 0.35
    assert len(timer_latencies(runs, 250, 0, grid)) == 200
    # The printed late share of first memslots is the unspun runs' too (5% here; all runs: 17.5%).
    from minivmm.timing.calibrate import late_shares
    assert late_shares(runs, 250, grid)[0] == pytest.approx(sum(x > TICK // 2 for x in lat[0::2]) / 200)
    assert waiter_tick_wait([dataclasses.replace(r, spun_ns=0) for r in runs], 250, 0, grid) is None  # none spun


def test_too_few_runs_leave_the_grid_undetermined():
    t_reg = 10**12 + TICK // 10  # early in its jiffy: most offsets fit this one run
    with pytest.raises(CalibrationError):
        estimate_tick_offset([CalibrationRun(t_reg, (10**12 // TICK + 2) * TICK + 50_000)], 250)


def test_a_memslot_returning_before_any_timer_is_refused():
    with pytest.raises(CalibrationError):
        estimate_tick_offset([CalibrationRun(10**12 + k * 997_000, 10**12 + k * 997_000 + 100_000)
                              for k in range(50)], 250)


def test_model_chain_is_the_fixed_steps_after_the_tick():
    chain = model_chain_ns(250, "pvm")
    c = Costs()
    assert c.workqueue_hop + c.wakeup < chain < 200_000


def test_cli_model_with_a_profile_and_with_bad_profiles(tmp_path):
    from conftest import run_cli
    f = tmp_path / "host-profile.json"
    f.write_text(json.dumps(profile([60_000] * 80 + [4_060_000] * 20).to_json()))
    proc = run_cli("model", "-s", "registrations-first", "--hz", "250", "--platform", "pvm", "-v", "call_srcu",
                   "-n", "200", "--json", "--profile", str(f))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    mem = next(s for s in data["variants"]["call_srcu"]["steps"] if s["op"] == "memslot")
    assert mem["max_us"] > 8000  # past the 2-jiffy rule: only the profile's late wake-ups do that
    proc = run_cli("model", "--hz", "100", "-n", "300", "--profile", str(f))
    assert proc.returncode == 0, proc.stderr
    odds = re.search(r"KVM_CREATE_VCPU, 0 >= the published 0.025182 s \(HZ=100\): (\d+)/300", proc.stdout)
    assert odds is not None and 0 < int(odds.group(1)) < 300  # 4 ms late wake-ups reach 25.2 ms sometimes
    for bad, fragment in ((tmp_path / "missing.json", "does not exist"), (tmp_path / "junk.json", "not JSON")):
        if bad.name == "junk.json":
            bad.write_text("{")
        proc = run_cli("model", "--profile", str(bad))
        assert proc.returncode == 2
        assert fragment in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_wakeup_latency_applies_only_to_waits_no_timer_ended():
    from kernel_model.kvm_main import KvmModel
    from kernel_model.platforms import get_platform
    from kernel_model.variants import get_variant
    costs = Costs(wakeup_latency_samples=(4_000_000, 4_000_000), timer_latency_samples=(60_000, 60_000))
    kvm = KvmModel(Sim(250, 0.5, costs), get_variant("call_srcu"), get_platform("pvm"))
    t0 = kvm.sim.now
    kvm.set_user_memory_region(0, 0, 1 << 20)       # idle srcu: expedited, no timer
    idle = kvm.sim.now - t0
    kvm.ioeventfd(0xD0000050, 4, 0)                 # call_srcu: a normal grace period, a timer
    t0 = kvm.sim.now
    kvm.set_user_memory_region(1, 1 << 32, 1 << 20)  # waits for that timer
    timed = kvm.sim.now - t0
    assert idle > 4_000_000
    assert timed < 2 * TICK  # no extra 4 ms on top of the timer's own draw


def test_a_profiles_latency_delays_the_waiter_not_the_grace_periods():
    from kernel_model.kvm_main import KvmModel
    from kernel_model.platforms import get_platform
    from kernel_model.variants import get_variant

    def memslot_after(gap_ns: int, samples: tuple[int, ...]) -> int:
        """A memslot's duration, ``gap_ns`` after a registration's call_srcu() started a grace period."""
        kvm = KvmModel(Sim(250, 0.5, Costs(timer_latency_samples=samples)), get_variant("call_srcu"),
                       get_platform("pvm"))
        kvm.ioeventfd(0xD0000050, 4, 0)
        kvm.sim.pause(gap_ns)
        t0 = kvm.sim.now
        kvm.set_user_memory_region(0, 0, 1 << 20)
        return kvm.sim.now - t0

    late = (TICK, TICK)  # every timer-ended wait's waiter switched in a tick late
    for gap in (7_000_000, 9_000_000):  # the grace period ended on its ticks: an idle srcu_struct
        assert memslot_after(gap, late) == memslot_after(gap, (0, 0)) < TICK // 10
    # A memslot that waits for that grace period's timer ends a tick later, its waiter's latency.
    assert memslot_after(1_000_000, late) == memslot_after(1_000_000, (0, 0)) + TICK


def test_a_run_whose_jiffies_lagged_does_not_break_the_grid():
    lat = [random.Random(9).choice([40_000, 80_000, 300_000]) for _ in range(300)]
    runs = synthetic_runs(1_000_000, lat)
    # one registration just after a boundary read the old jiffy: its timer fired a tick early
    r = runs[7]
    runs[7] = CalibrationRun(r.t_reg_ns, r.t_end_ns - TICK)
    est = estimate_tick_offset(runs, 250)
    assert min(abs(est - 1_000_000), TICK - abs(est - 1_000_000)) < 60_000
    assert len(timer_latencies(runs, 250, 0)) == 300


def test_a_timer_armed_just_past_a_boundary_is_not_counted_a_tick_late():
    # Every 20th registration is issued 10 µs before a boundary and arms 60 µs later (a slow ioctl),
    # after it: its timer fires a tick later than t_reg says, on time for when it was armed.
    rng = random.Random(4)
    runs, lat = [], []
    for k in range(400):
        straddles = k % 20 == 0
        t_reg = 10**12 + k * 10 * TICK + (TICK - 10_000 if straddles else rng.randrange(TICK))
        t_reg_end = t_reg + 80_000
        armed = t_reg + 60_000
        lat.append(rng.choice([40_000, 80_000, 120_000]))
        runs.append(CalibrationRun(t_reg, (armed // TICK + 2) * TICK + lat[-1], t_reg_end_ns=t_reg_end))
    got = timer_latencies(runs, 250, 0)
    assert len(got) == len(lat)
    assert all(abs(g - x) < 40_000 for g, x in zip(got, lat))  # to the grid's uncertainty; none a tick off
    # On an exact grid, the registration's return is what places the arming past the boundary.
    exact = TickGrid(0, 0)
    t_reg, t_end = 10**12 - 10_000, 10**12 + 2 * TICK + 40_000
    assert resolved_latency(t_reg, t_reg + 80_000, t_end, TICK, exact) == 40_000
    assert resolved_latency(t_reg, 0, t_end, TICK, exact) == TICK + 40_000


@pytest.mark.kvm
@pytest.mark.slow
def test_cli_calibrate_writes_a_profile_and_never_over_a_foreign_file(tmp_path):
    from conftest import run_cli
    out = tmp_path / "p.json"
    proc = run_cli("timing", "--calibrate", "--repeat", "80", "--profile", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    prof = load_profile(str(out))
    assert prof.calibration_runs == 80 and len(prof.timer_latency_ns) > 2 and prof.wakeup_latency_ns
    assert 0 < prof.wakeup_latency_run_ns < 10**9  # how long its caller ran before those waits
    assert "host profile:" in proc.stdout
    assert re.search(r"the VM's first memslot \(a wait no timer ended\) over 250 us late \(its caller switched in "
                     r"behind another task\): [\d.]+%, its caller having run \d+ us before it", proc.stdout)
    scale, df = prof.fixed_cost_scatter or (0.0, 0)
    assert scale > 0 and df >= 1  # the host's scatter around a fixed cost, for the verdict's noise
    # --json: the same calibration as one document.
    proc = run_cli("timing", "--calibrate", "--repeat", "40", "--profile", str(out), "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    from jsonschemas import validate
    validate(doc, "calibration")
    assert doc["profile_path"] == str(out) and doc["summary"]["runs"] == 40
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": true}')
    proc = run_cli("timing", "--calibrate", "--repeat", "5", "--profile", str(foreign))
    assert proc.returncode == 2 and "not a minivmm host profile" in proc.stderr
    assert foreign.read_text() == '{"mine": true}'
    # A profile of ours in the older format is refused for use, and --calibrate may replace it.
    old_profile = {**json.loads(out.read_text()), "version": 1}
    out.write_text(json.dumps(old_profile))
    with pytest.raises(ProfileError, match="older minivmm.*timing --calibrate"):
        load_profile(str(out))
    proc = run_cli("timing", "--calibrate", "--repeat", "80", "--profile", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["version"] == 3


# --- the tick slip, from the CPUs' ticks and the do_timer duty -------------------------------------

def test_a_profile_keeps_its_fixed_cost_scatter_and_refuses_a_bad_one():
    prof = HostProfile(250, "pvm", "6.18", "now", (0.1, 0.1, 0.1), 10, (1, 2), fixed_cost_scatter=(0.12, 3))
    data = prof.to_json()
    assert data["fixed_cost_scatter"] == {"scale": 0.12, "df": 3}
    assert HostProfile.from_json(data).fixed_cost_scatter == (0.12, 3)
    assert HostProfile.from_json({k: v for k, v in data.items() if k != "fixed_cost_scatter"}).fixed_cost_scatter \
        is None
    for bad in ({"scale": 0, "df": 3}, {"scale": 0.1, "df": 0}, {"scale": "x", "df": 3}, [0.1, 3]):
        with pytest.raises(ProfileError, match="fixed_cost_scatter"):
            HostProfile.from_json({**data, "fixed_cost_scatter": bad})


def test_the_calibration_fits_the_scatter_of_its_registrations():
    from minivmm.timing.calibrate import fixed_cost_scatter
    rng = random.Random(3)
    runs = [CalibrationRun(t_reg_ns=10**9 * i, t_end_ns=10**9 * i + 5_000_000, t_reg_end_ns=10**9 * i + 1000
                           + rng.randrange(200), t_reg2_ns=10**9 * i + 6_000_000,
                           t_reg2_end_ns=10**9 * i + 6_001_500 + rng.randrange(300)) for i in range(1, 200)]
    scale, df = fixed_cost_scatter(runs) or (0.0, 0)
    assert 0.01 < scale < 0.2 and df >= 1
    assert fixed_cost_scatter(runs[:3]) is None


def _vm(env: TickEnvironment, seed: int = 0):
    from kernel_model.kvm_main import KvmModel
    from kernel_model.platforms import get_platform
    from kernel_model.variants import get_variant
    return KvmModel(Sim(250, 0.5, Costs(cpus=env), random.Random(seed)), get_variant("call_srcu"),
                    get_platform("pvm"))


def _registration_then_memslot(kvm, addr: int, slot: int) -> int:
    kvm.ioeventfd(addr, 4, 0)
    t0 = kvm.sim.now
    kvm.set_user_memory_region(slot, slot << 32, 1 << 20)
    return kvm.sim.now - t0


#: The other CPU always ticking, and holding the duty when the model starts to look.
BUSY_OTHER = TickEnvironment(other_tick_share=1.0, other_tick_persist=1.0, other_holds_duty=1.0)


def test_a_quiet_host_never_slips():
    plain = _vm(TickEnvironment())
    waits = [_registration_then_memslot(plain, 0xD0000050 + 0x10 * i, i) for i in range(4)]
    assert all(w < 2 * TICK for w in waits) and plain.sim.ticks.slips == 0


def test_the_bucket_waits_a_tick_when_the_timer_cpu_ticks_first_without_the_duty():
    # The caller's CPU keeps its tick through the wait and its handler runs before the duty holder's:
    # it sees the old jiffies (run_local_timers()), and the timer fires at its next tick.
    slipping = _vm(BUSY_OTHER._replace(caller_keeps_tick=1.0, caller_tick_first=1.0))
    on_time = _vm(TickEnvironment())
    first = [_registration_then_memslot(kvm, 0xD0000050, 0) for kvm in (on_time, slipping)]
    assert first[1] - first[0] == TICK
    assert slipping.sim.ticks.slips == 1 and slipping.sim.ticks.tick_do_timer_cpu != slipping.sim.caller_cpu
    second = [_registration_then_memslot(kvm, 0xD0000060, 1) for kvm in (on_time, slipping)]
    assert second[1] - second[0] == TICK  # any timer, not one arming position


def test_no_slip_when_the_duty_holder_ticks_first_or_the_timer_cpu_wakes_from_a_stopped_tick():
    other_first = _vm(BUSY_OTHER._replace(caller_keeps_tick=1.0, caller_tick_first=0.0))
    stopped = _vm(BUSY_OTHER._replace(caller_keeps_tick=0.0, caller_tick_first=1.0))
    for kvm in (other_first, stopped):
        assert _registration_then_memslot(kvm, 0xD0000050, 0) < 2 * TICK
        assert kvm.sim.ticks.slips == 0


def test_the_timer_cpu_keeps_its_tick_when_the_timer_is_a_tick_away():
    # tick_nohz_next_event(): a wait that starts in the jiffy before the bucket keeps the tick, so the
    # periodic handler runs there even with no outside reason (caller_keeps_tick 0).
    from kernel_model.kvm_main import KvmModel
    from kernel_model.platforms import get_platform
    from kernel_model.variants import get_variant
    env = BUSY_OTHER._replace(caller_keeps_tick=0.0, caller_tick_first=1.0)
    kvm = KvmModel(Sim(250, 0.1, Costs(cpus=env), random.Random(0)), get_variant("call_srcu"),
                   get_platform("pvm"))
    kvm.ioeventfd(0xD0000050, 4, 0)
    kvm.sim.pause(TICK)  # the caller spins the last 200 us of it into the jiffy before the bucket
    t0 = kvm.sim.now
    kvm.set_user_memory_region(0, 0, 1 << 20)
    assert kvm.sim.now - t0 > TICK and kvm.sim.ticks.slips == 1


def test_at_a_contested_tick_another_cpu_holds_the_duty_with_the_measured_share():
    # The caller CPU's handler runs first at every tick and the other CPU ticks, stopping its tick for
    # a moment between ticks half the time (giving the duty up, which the caller CPU would then keep):
    # the share of slips is still the measured one, where it was measured.
    env = BUSY_OTHER._replace(caller_keeps_tick=1.0, caller_tick_first=1.0, caller_first_persist=1.0,
                              other_holds_duty=0.3, other_stops_between=0.5)
    late = sum(_registration_then_memslot(_vm(env, seed), 0xD0000050, 0) > 2 * TICK for seed in range(400))
    assert 80 < late < 160  # 30% of 400


def _traced(cpu1_stops_again: bool) -> TracedTicks:
    """Host ticks 900-1020 on a grid at 0 (the model's tick 0 is host tick 1005): both CPUs' handlers
    run at every tick, CPU 0's first, but CPU 1 stopped its tick after tick 940 (so CPU 0 took the
    duty) and CPU 0 after tick 998, for two ticks (so CPU 1 took it); with ``cpu1_stops_again`` CPU 1
    gives it up after tick 1003 as well."""
    cpu0 = [k * TICK + 2_000 for k in range(900, 1021) if k not in (999, 1000)]
    cpu1 = [k * TICK + 5_000 for k in range(900, 1021) if k != 941]
    again = [1003 * TICK + 100_000] if cpu1_stops_again else []
    stops = {0: [998 * TICK + 100_000], 1: [940 * TICK + 100_000, *again]}
    return TracedTicks({0: cpu0, 1: cpu1}, stops, TICK, 0, 1005)


def test_the_duty_follows_the_traced_tick_stops_by_the_kernels_rule():
    from kernel_model.tick import TICK_DO_TIMER_NONE
    traced = _traced(False)
    assert traced.duty_before(-10, 2) == 0  # CPU 1 gave it up at 940; CPU 0 ticked next
    assert traced.duty_before(-5, 2) == 1  # CPU 0 gave it up at 998; only CPU 1 ticked until 1001
    assert _traced(True).duty_before(0, 2) == 0  # CPU 1 gave it up again; CPU 0 ticked next
    no_stops = traced._replace(stops={})
    assert no_stops.duty_before(0, 2) is None  # no stop says who holds it
    assert TICK_DO_TIMER_NONE == -1


def test_a_replayed_run_slips_where_the_traced_ticks_put_the_duty_elsewhere():
    # The caller (CPU 0) registers at the model's time 0 and its memslot waits for the bucket's tick,
    # where CPU 0's handler runs first. Held by CPU 1 since CPU 0's tick stop: the timer waits a tick.
    # Given back before the bucket: CPU 0 takes it, and the timer fires on time. Never drawn: the
    # profile's share (1.0 here) would slip both.
    from kernel_model.kvm_main import KvmModel
    from kernel_model.platforms import get_platform
    from kernel_model.variants import get_variant
    env = BUSY_OTHER._replace(caller_keeps_tick=1.0, caller_tick_first=1.0, other_holds_duty=1.0)

    def wait(cpu1_stops_again: bool, seed: int) -> tuple[int, int]:
        sim = Sim(250, 0.5, Costs(cpus=env), random.Random(seed), caller_cpu=0, traced=_traced(cpu1_stops_again))
        kvm = KvmModel(sim, get_variant("call_srcu"), get_platform("pvm"))
        return _registration_then_memslot(kvm, 0xD0000050, 0), sim.ticks.slips
    assert {wait(False, seed)[1] for seed in range(10)} == {1}
    assert {wait(True, seed)[1] for seed in range(10)} == {0}
    assert all(wait(False, seed)[0] - wait(True, seed)[0] == TICK for seed in range(10))


def _busy(lead_ns: int) -> TracedTicks:
    """Host ticks 900-1020 on a grid at 0 (the model's tick 0 is host tick 1005), both CPUs' handlers at
    every tick, CPU 0's ``lead_ns`` before CPU 1's, and no tick stop: nothing says who holds the duty."""
    cpu0 = [k * TICK + 10_000 for k in range(900, 1021)]
    cpu1 = [k * TICK + 10_000 + lead_ns for k in range(900, 1021)]
    return TracedTicks({0: cpu0, 1: cpu1}, {}, TICK, 0, 1005)


def test_where_no_tick_stop_says_who_holds_the_duty_the_handlers_lead_decides_the_race():
    # A busy host: every CPU ticks, none stops. The caller's timer (CPU 0) slips with the share measured
    # for its CPU's handler lead at the bucket's tick, whatever the duty's drawn share (0 here) says.
    from kernel_model.kvm_main import KvmModel
    from kernel_model.platforms import get_platform
    from kernel_model.tick import LEAD_BINS_NS, lead_bin
    from kernel_model.variants import get_variant
    assert [lead_bin(x) for x in (-1, 0, 499, 500, 1_999, 2_000, 4_999, 5_000)] == [0, 1, 1, 2, 4, 5, 5, 6]
    race = ((0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0), (0.0,) * (len(LEAD_BINS_NS) + 1))
    env = BUSY_OTHER._replace(caller_keeps_tick=1.0, other_holds_duty=0.0, slips_by_lead=race)
    assert env.slip_share(0, 3_000) == 1.0 and env.slip_share(1, 3_000) == 0.0 and env.slip_share(2, 0) is None

    def slips(lead_ns: int, cpu: int = 0, environment: TickEnvironment = env) -> set[int]:
        out = set()
        for seed in range(10):
            sim = Sim(250, 0.5, Costs(cpus=environment), random.Random(seed), caller_cpu=cpu, traced=_busy(lead_ns))
            _registration_then_memslot(KvmModel(sim, get_variant("call_srcu"), get_platform("pvm")), 0xD0000050, 0)
            out.add(sim.ticks.slips)
        return out
    assert slips(3_000) == {1}  # CPU 0's handler 3 us ahead: its timer slips
    assert slips(200) == {0}  # 0.2 us ahead: the holder's update came first
    assert slips(-3_000) == {0}  # behind: nothing to race
    assert slips(-3_000, cpu=1) == {0}  # CPU 1's handler 3 us ahead, but no timer of CPU 1 ever slipped
    # Not measured: the duty's share decides as before (0: the caller CPU holds it, nothing slips).
    assert slips(3_000, environment=env._replace(slips_by_lead=())) == {0}


def test_a_race_table_is_checked_for_its_shape():
    from kernel_model.tick import LEAD_BINS_NS
    ok = BUSY_OTHER._replace(slips_by_lead=((0.1,) * (len(LEAD_BINS_NS) + 1), (None,) * (len(LEAD_BINS_NS) + 1)))
    ok.check()
    for bad in (((0.1,) * 3,), ((1.5,) * (len(LEAD_BINS_NS) + 1),), [(0.1,) * (len(LEAD_BINS_NS) + 1)]):
        with pytest.raises(ValueError, match="slips_by_lead"):
            BUSY_OTHER._replace(slips_by_lead=bad).check()


def test_a_timer_slips_with_the_measured_share_when_the_other_cpus_handler_runs_first():
    # The duty holder's handler enters first, yet its jiffies update can come after the timer CPU's
    # run_local_timers(): other_first_slips, applied where the other CPU ticks first.
    env = BUSY_OTHER._replace(caller_keeps_tick=1.0, caller_tick_first=0.0, other_first_slips=0.25)
    late = sum(_registration_then_memslot(_vm(env, seed), 0xD0000050, 0) > 2 * TICK for seed in range(400))
    assert 60 < late < 140  # 25% of 400
    assert not any(_registration_then_memslot(_vm(env._replace(other_first_slips=0.0), seed), 0xD0000050, 0)
                   > 2 * TICK for seed in range(100))


def test_the_slip_share_follows_the_environment():
    env = BUSY_OTHER._replace(caller_keeps_tick=0.5, caller_tick_first=0.5)
    late = sum(_registration_then_memslot(_vm(env, seed), 0xD0000050, 0) > 2 * TICK for seed in range(400))
    assert 60 < late < 140  # 1/4 of 400: kept tick and handler first, each half the time


def test_predict_draws_the_ticks_per_sample():
    from kernel_model.sequences import parse_sequence
    seq = parse_sequence("create_vm\nioeventfd addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n")
    env = BUSY_OTHER._replace(caller_keeps_tick=1.0, caller_tick_first=0.5)
    p = predict(seq, "call_srcu", 250, "pvm", samples=400, costs=Costs(cpus=env))
    late = sum(d > 2 * TICK for d in p.steps[2].durations) / 400
    assert 0.35 < late < 0.65


def _vm_on(env: TickEnvironment, cpu: int, seed: int = 0):
    from kernel_model.kvm_main import KvmModel
    from kernel_model.platforms import get_platform
    from kernel_model.variants import get_variant
    return KvmModel(Sim(250, 0.5, Costs(cpus=env), random.Random(seed), caller_cpu=cpu), get_variant("call_srcu"),
                    get_platform("pvm"))


def test_the_duty_and_the_handler_order_are_the_caller_cpus():
    # On a busy host the duty stays on one CPU: a timer armed there never slips, one armed on the other
    # does when that CPU's handler runs first. The scalar shares say neither.
    env = BUSY_OTHER._replace(caller_keeps_tick=1.0, caller_tick_first=0.5, other_holds_duty=0.5,
                              caller_first_persist=1.0, caller_tick_first_by_cpu=(0.2, 1.0),
                              other_holds_duty_by_cpu=(0.0, 1.0))
    assert env.tick_first_on(1) == 1.0 and env.holds_duty_against(0) == 0.0
    on_boot = [_registration_then_memslot(_vm_on(env, 0, seed), 0xD0000050, 0) for seed in range(40)]
    on_other = [_registration_then_memslot(_vm_on(env, 1, seed), 0xD0000050, 0) for seed in range(40)]
    assert all(w < 2 * TICK for w in on_boot)
    assert all(w > 2 * TICK for w in on_other)
    unmeasured = env._replace(caller_tick_first_by_cpu=(0.2, None), other_holds_duty_by_cpu=())
    assert unmeasured.tick_first_on(1) == 0.5 and unmeasured.holds_duty_against(1) == 0.5  # the scalars
    with pytest.raises(Exception, match="caller's CPU must be 0..1"):
        _vm_on(env, 2)


def test_a_waiter_that_worked_before_its_wait_is_switched_in_at_the_tick_behind_a_busy_task():
    # Costs.waiter_tick_wait: the share applies in proportion to the caller's run time before a wait a
    # timer ended (share * run / run_ns); the woken caller then runs at its CPU's next tick.
    from kernel_model.kvm_main import KvmModel
    from kernel_model.platforms import get_platform
    from kernel_model.sim import SPIN_LAST_NS
    from kernel_model.variants import get_variant

    def wait_after(work_ns: int, waiter: tuple[int, float], seed: int) -> tuple[int, int]:
        kvm = KvmModel(Sim(250, 0.5, Costs(waiter_tick_wait=waiter), random.Random(seed)), get_variant("call_srcu"),
                       get_platform("pvm"))
        kvm.ioeventfd(0xD0000050, 4, 0)
        kvm.sim.pause(1_000_000)  # asleep, then spinning its last SPIN_LAST_NS
        kvm.sim.spend(work_ns)  # the caller works before its wait
        t0 = kvm.sim.now
        kvm.set_user_memory_region(0, 0, 1 << 20)
        return kvm.sim.now - t0, kvm.sim.now
    plain = {wait_after(0, (0, 0.0), seed) for seed in range(20)}
    assert len(plain) == 1  # no profile: the same wait whatever the seed
    (wait, end), = plain
    late = {wait_after(0, (SPIN_LAST_NS, 1.0), seed) for seed in range(20)}
    assert len(late) == 1
    (late_wait, late_end), = late
    assert 0 < late_wait - wait <= TICK  # switched in at the next tick: on the grid (phase 0.5 here)
    assert (late_end + TICK // 2) % TICK == 0 and (end + TICK // 2) % TICK != 0
    # In proportion to the run before the wait: SPIN_LAST_NS of a 4 * SPIN_LAST_NS run_ns is a quarter.
    quarter = sum(wait_after(0, (4 * SPIN_LAST_NS, 1.0), seed)[0] > wait for seed in range(400))
    assert 60 < quarter < 140
    assert {wait_after(0, (SPIN_LAST_NS, 0.0), seed) for seed in range(20)} == plain  # share 0: never
    # And past run_ns: a run twice as long, at half the share, is always late (not capped at run_ns).
    assert {wait_after(0, (SPIN_LAST_NS // 2, 0.5), seed) for seed in range(20)} == late


def test_a_timer_less_waits_late_wake_up_grows_with_the_run_before_it():
    # Costs.wakeup_latency_run_ns: the measured late share (1 in 10 here: one sample a tick late, one
    # 1 ms late, both over SWITCHED_IN_LATE_NS) holds for a waiter that ran as long as the calibration's
    # did or longer; in proportion for a shorter run.
    samples = (50_000,) * 18 + (1_000_000, 4_000_000)

    def late_shares(ran: int, run_ns: int) -> tuple[float, float]:
        sim = Sim(250, 0.5, Costs(wakeup_latency_samples=samples, wakeup_latency_run_ns=run_ns), random.Random(5))
        draws = [sim.wakeup_latency(ran) for _ in range(20_000)]
        assert set(draws) <= set(samples)
        return (sum(d == 1_000_000 for d in draws) / len(draws), sum(d == 4_000_000 for d in draws) / len(draws))

    def between(shares: tuple[float, float], lo: float, hi: float) -> bool:
        return all(lo < s < hi for s in shares)
    assert between(late_shares(250_000, 250_000), 0.04, 0.06)
    assert between(late_shares(25_000, 250_000), 0.003, 0.008)  # the sub-tick late one scales as well
    assert between(late_shares(500_000, 250_000), 0.04, 0.06)
    assert late_shares(0, 250_000) == (0.0, 0.0)
    assert between(late_shares(0, 0), 0.04, 0.06)  # not measured: as measured, whatever the run


def test_a_caller_that_waited_behind_a_busy_task_is_owed_the_time_and_wakes_on_time():
    # EEVDF's lag: half of a late wake-up's wait is owed back, spent at half the caller's run. Every
    # other idle memslot's waiter is drawn 3 ms late (no run scaling: the profile did not measure it).
    from kernel_model.kvm_main import KvmModel
    from kernel_model.platforms import get_platform
    from kernel_model.variants import get_variant
    costs = Costs(wakeup_latency_samples=(10_000, 3_000_000))

    def memslots(seed: int, run_between: int) -> list[int]:
        kvm = KvmModel(Sim(250, 0.5, costs, random.Random(seed)), get_variant("call_srcu"), get_platform("pvm"))
        out = []
        for slot in range(3):
            if slot:
                kvm.sim.spend(run_between)  # the caller works before its next memslot
            t0 = kvm.sim.now
            kvm.set_user_memory_region(slot, slot << 32, 1 << 20)
            out.append(kvm.sim.now - t0)
        return out
    runs = [memslots(seed, 100_000) for seed in range(200)]
    after_late = [r[1] for r in runs if r[0] > 2_000_000]
    after_on_time = [r[1] for r in runs if r[0] < 1_000_000]
    assert len(after_late) > 50 and len(after_on_time) > 50
    assert max(after_late) < 1_000_000  # owed 1.5 ms, spent 50 us: on time
    assert 0.3 < sum(d > 2_000_000 for d in after_on_time) / len(after_on_time) < 0.7
    # Two late waits in a row need the owed time spent first: 3.2 ms of run spends 1.6 ms.
    runs = [memslots(seed, 3_200_000) for seed in range(200)]
    again = [r[1] for r in runs if r[0] > 2_000_000]
    assert 0.3 < sum(d > 2_000_000 for d in again) / len(again) < 0.7


def test_a_per_cpu_share_is_pulled_towards_the_all_cpu_one():
    from minivmm.timing.ticktrace import PER_CPU_PRIOR, per_cpu
    assert per_cpu([], 0.3) is None
    assert per_cpu([True] * 3, 0.0) == round(3 / (3 + PER_CPU_PRIOR), 4)
    assert abs(per_cpu([True] * 500 + [False] * 500, 0.0) - 0.5) < 0.01  # many samples: their own share


def test_profile_carries_the_ticks_and_refuses_bad_ones(tmp_path):
    base = profile([50_000, 60_000])
    data = base.to_json()
    assert data["version"] == 3 and data["ticks"]["other_tick_share"] == 0.0
    data["ticks"] = {**data["ticks"], "other_tick_share": 0.3, "measured_with": "tracefs"}
    loaded = HostProfile.from_json(data)
    assert loaded.costs().cpus.other_tick_share == 0.3 and loaded.ticks_measured_with == "tracefs"
    data["waiter_tick_wait"] = {"run_ns": 300_000, "share": 0.12}
    assert HostProfile.from_json(json.loads(json.dumps(data))).costs().waiter_tick_wait == (300_000, 0.12)
    for bad_waiter in ({"run_ns": 0, "share": 0.1}, {"run_ns": 300_000, "share": 2}, [300_000, 0.1]):
        with pytest.raises(ProfileError, match="waiter_tick_wait"):
            HostProfile.from_json({**data, "waiter_tick_wait": bad_waiter})
    del data["waiter_tick_wait"]
    data["wakeup_latency_run_ns"] = 262_000
    assert HostProfile.from_json(json.loads(json.dumps(data))).costs().wakeup_latency_run_ns == 262_000
    for bad_run in (-1, 10**10, 2.5, True):
        with pytest.raises(ProfileError, match="wakeup_latency_run_ns"):
            HostProfile.from_json({**data, "wakeup_latency_run_ns": bad_run})
    del data["wakeup_latency_run_ns"]
    assert HostProfile.from_json(data).costs().wakeup_latency_run_ns == 0
    data["ticks"] = {**data["ticks"], "other_holds_duty_by_cpu": [0.1, None]}
    assert HostProfile.from_json(json.loads(json.dumps(data))).ticks.other_holds_duty_by_cpu == (0.1, None)
    race = [[0.05, 0.3, 0.4, None, 0.5, 0.98, 1.0], [0.0] * 7]
    data["ticks"] = {**data["ticks"], "slips_by_lead": race}
    assert HostProfile.from_json(json.loads(json.dumps(data))).ticks.slips_by_lead == tuple(map(tuple, race))
    for bad in ({"other_tick_share": 1.5}, {"caller_tick_first": "x"}, {"nr_cpus": 0}, {"color": 1}, [],
                {"other_holds_duty_by_cpu": 0.5}, {"caller_tick_first_by_cpu": [0.5, 2]},
                {"caller_tick_first_by_cpu": [0.5, 0.5, 0.5]}, {"slips_by_lead": [0.5]},
                {"slips_by_lead": [[0.5] * 3]}, {"slips_by_lead": [[0.5] * 7] * 3}):
        data["ticks"] = bad
        with pytest.raises(ProfileError, match="ticks"):
            HostProfile.from_json(data)
    data["ticks"] = {}
    for old in (1, 2):
        with pytest.raises(ProfileError, match=f"older minivmm \\(format version {old}.*timing --calibrate"):
            HostProfile.from_json({**data, "version": old})


def test_a_profile_from_another_hz_or_platform_is_warned_about_in_one_line(tmp_path, capsys):
    from minivmm.cli.app import main
    prof = HostProfile(250, "pvm", "6.18", "now", (0.1, 0.1, 0.1), 10, (40_000, 60_000))
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof.to_json()))
    assert main(["model", "--profile", str(path), "--hz", "100", "--platform", "vmx", "-n", "20"]) == 0
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("minivmm: warning:")]
    assert len(err) == 1 and "calibrated at HZ=250 on pvm, this run models HZ=100 on vmx" in err[0]
    assert "rescaled to HZ=100" in err[0] and "did not measure" in err[0]
    assert main(["model", "--profile", str(path), "--hz", "250", "--platform", "pvm", "-n", "20"]) == 0
    assert "warning" not in capsys.readouterr().err
