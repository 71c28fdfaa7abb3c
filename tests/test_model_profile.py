"""Host profiles: the file format, the model drawing timer latencies from one, and the calibration's
arithmetic (tick grid, latency) on synthetic runs, without KVM."""

from __future__ import annotations

import json
import random
import re

import pytest

from kernel_model.costs import Costs
from kernel_model.predict import predict
from kernel_model.profile import HostProfile, ProfileError, load_profile, quantile_points
from kernel_model.sequences import SEQUENCES
from kernel_model.sim import Sim, Timer
from minivmm.timing.calibrate import (CalibrationError, CalibrationRun, TickGrid, estimate_tick_offset,
                                      model_chain_ns, resolved_latency, tick_slip, timer_latencies)

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
    draws = [sim.timer_latency() for _ in range(2000)]
    assert min(draws) >= 100_000 and max(draws) <= 4_100_000
    assert 0.05 < sum(d > 1_000_000 for d in draws) / len(draws) < 0.2
    assert Sim(250).timer_latency() == Costs().timer_latency


def test_one_slow_calibration_run_keeps_its_weight():
    # 1 late run of 1000: the profile keeps every sample, and the model draws the late one about 1 time
    # in 1000, not the 1 in 200 of a 201-quantile table (whose top point it was).
    lat = [60_000 + k for k in range(999)] + [4_100_000]
    p = profile(lat)
    assert p.timer_latency_ns == tuple(sorted(lat))
    sim = Sim(250, 0.0, p.costs(), random.Random(3))
    draws = [sim.timer_latency() for _ in range(100_000)]
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
    proc = run_cli("model", "-s", "registrations-first", "--hz", "250", "-p", "pvm", "-v", "call_srcu",
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
def test_cli_calibrate_writes_a_profile_and_never_over_a_foreign_file(tmp_path):
    from conftest import run_cli
    out = tmp_path / "p.json"
    proc = run_cli("timing", "--calibrate", "--repeat", "80", "--profile", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    prof = load_profile(str(out))
    assert prof.calibration_runs == 80 and len(prof.timer_latency_ns) > 2 and prof.wakeup_latency_ns
    assert "host profile:" in proc.stdout
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
    assert json.loads(out.read_text())["version"] == 2


# --- tick slip: the timer armed after a VM's first timer-ended wait, one tick past its bucket ---------

def _slip_vm(slip: float):
    from kernel_model.kvm_main import KvmModel
    from kernel_model.platforms import get_platform
    from kernel_model.variants import get_variant
    return KvmModel(Sim(250, 0.5, Costs(tick_slip=slip)), get_variant("call_srcu"), get_platform("pvm"))


def _registration_then_memslot(kvm, addr: int, slot: int) -> int:
    kvm.ioeventfd(addr, 4, 0)
    t0 = kvm.sim.now
    kvm.set_user_memory_region(slot, slot << 32, 1 << 20)
    return kvm.sim.now - t0


def test_tick_slip_delays_only_the_timer_armed_after_the_first_timer_ended_wait():
    plain, slipping = _slip_vm(0.0), _slip_vm(1.0)
    first = [_registration_then_memslot(kvm, 0xD0000050, 0) for kvm in (plain, slipping)]
    assert first[0] == first[1]  # the VM's first timer: no wait before it
    second = [_registration_then_memslot(kvm, 0xD0000060, 1) for kvm in (plain, slipping)]
    assert second[1] - second[0] == TICK
    third = [_registration_then_memslot(kvm, 0xD0000070, 2) for kvm in (plain, slipping)]
    assert third[1] == third[0]  # after the second wait: on time (the host: 0-1.3%)


def test_a_wait_no_timer_ended_does_not_open_the_slip():
    kvm = _slip_vm(1.0)
    kvm.set_user_memory_region(0, 0, 1 << 20)  # an expedited grace period on an idle srcu_struct
    assert kvm.sim.slip_window == "before"
    assert _registration_then_memslot(kvm, 0xD0000050, 1) < 2 * TICK


def test_a_wait_between_the_first_wait_and_the_registration_closes_the_slip():
    # Host: `ioeventfd; memslot; ioeventfd; memslot` slipped 8%; with a deassign (an idle expedited
    # grace period) before the second registration, 0%.
    kvm = _slip_vm(1.0)
    _registration_then_memslot(kvm, 0xD0000050, 0)
    assert kvm.sim.slip_window == "open"
    kvm.ioeventfd_deassign(0xD0000050, 4, 0)
    assert kvm.sim.slip_window == "spent"
    assert _registration_then_memslot(kvm, 0xD0000060, 1) < 2 * TICK


def test_only_kvm_srcus_grace_period_timer_slips():
    sim = Sim(250, 0.5, Costs(tick_slip=1.0))
    sim.slip_window = "open"
    other = Timer(sim, lambda: None)  # e.g. srcu_struct's sdp_delay_work, or irq_srcu's timers
    other.add_timer(sim.jiffies + 1)
    assert sim.slip_window == "open"  # not spent: this timer cannot slip
    kvm = _slip_vm(1.0)
    assert kvm.srcu.work.timer.may_slip and not kvm.irq_srcu.work.timer.may_slip


def test_tick_slip_share_is_drawn():
    late = 0
    for seed in range(200):
        kvm = _slip_vm(0.25)
        kvm.sim.rng.seed(seed)
        _registration_then_memslot(kvm, 0xD0000050, 0)
        late += _registration_then_memslot(kvm, 0xD0000060, 1) > 2 * TICK
    assert 25 < late < 75


def test_predict_draws_the_slip_per_sample_without_latency_samples():
    # With tick_slip alone (no measured latencies) the phase interpolation, which replays one fixed
    # random stream, must not be used: each sample draws its own slip.
    from kernel_model.sequences import parse_sequence
    seq = parse_sequence("create_vm\nioeventfd addr=0xd0000050 len=4\nmemslot slot=0 base=0 size=2M\n"
                         "ioeventfd addr=0xd0001050 len=4\nmemslot slot=1 base=0x100000000 size=2M\n")
    p = predict(seq, "call_srcu", 250, "pvm", samples=400, costs=Costs(tick_slip=0.5))
    late = sum(d > 2 * TICK for d in p.steps[4].durations) / 400
    assert 0.35 < late < 0.65


def test_profile_carries_tick_slip_and_refuses_a_bad_one(tmp_path):
    base = profile([50_000, 60_000])
    data = base.to_json()
    assert data["tick_slip"] == 0.0
    data["tick_slip"] = 0.08
    assert HostProfile.from_json(data).costs().tick_slip == 0.08
    del data["tick_slip"]
    assert HostProfile.from_json(data).tick_slip == 0.0  # profiles written before it still load
    for bad in (1.5, -0.1, "x", True):
        data["tick_slip"] = bad
        with pytest.raises(ProfileError, match="tick_slip"):
            HostProfile.from_json(data)


def test_calibration_tick_slip_is_the_second_timers_excess_lateness():
    rng = random.Random(5)
    runs = []
    for k in range(400):
        t_reg = 10**12 + k * 10 * TICK + rng.randrange(TICK)
        fire = (t_reg // TICK + 2) * TICK
        t_end = fire + 60_000 + (TICK if k % 50 == 0 else 0)          # 2% late wake-ups
        t_reg2 = t_end + 100_000
        fire2 = (t_reg2 // TICK + 2) * TICK
        t_end2 = fire2 + 60_000 + (TICK if k % 10 == 0 else 0)        # 10% late
        runs.append(CalibrationRun(t_reg, t_end, 30_000, t_reg2, t_end2))
    assert tick_slip(runs, 250) == pytest.approx(0.08, abs=0.015)  # the grid is found to ~GRID_STEP_NS
    assert tick_slip([CalibrationRun(r.t_reg_ns, r.t_end_ns) for r in runs], 250) == 0.0
