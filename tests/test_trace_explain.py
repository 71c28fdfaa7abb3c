"""The explanation of a trace, without KVM: a synthetic trace of a known set-up (the events a tracer
would have recorded) becomes a sequence, is predicted under every variant, and its stall is attributed
by the kernel model to the registration whose grace period it waited for."""

from __future__ import annotations

from kernel_model.stats import STALL_NS
from minivmm.kvm.uapi import ffi, ioctl_name, lib, request_number
from minivmm.trace import decode
from minivmm.trace.explain import build_sequence, explain, ioctl_ref
from minivmm.trace.tracer import Clock, IoctlEvent, StopReason, TraceResult


def _raw(ctype: str, **fields: int) -> bytes:
    s = ffi.new(f"{ctype} *")
    for k, v in fields.items():
        setattr(s, k, v)
    return bytes(ffi.buffer(s))


def synthetic_trace(stall_ns: int) -> TraceResult:
    """create_vm, six MMIO ioeventfds, a memslot lasting ``stall_ns``, a vCPU; 50 us apart."""
    events: list[IoctlEvent] = []
    t = 1_000_000_000

    def add(role: str, request: int, arg: int, raw: bytes | None, dur: int, ret: int = 0) -> None:
        nonlocal t
        ev = IoctlEvent(len(events), 100, 100, 3 if role == "system" else 4, role, request,
                        ioctl_name(request), arg, raw, t, t + dur, ret, t, t + dur)
        events.append(ev)
        t += dur + 50_000

    add("system", request_number("KVM_GET_API_VERSION"), 0, None, 1_000, 12)
    add("system", decode.KVM_CREATE_VM, 0, None, 200_000, 4)
    for i in range(6):
        add("vm", decode.KVM_IOEVENTFD, 0x7000, _raw("struct kvm_ioeventfd", addr=0xD0000050 + (i // 2) * 0x1000,
                                                      len=4, datamatch=i % 2, fd=5 + i,
                                                      flags=lib.KVM_IOEVENTFD_FLAG_DATAMATCH), 2_000)
    add("vm", decode.KVM_SET_USER_MEMORY_REGION, 0x7100,
        _raw("struct kvm_userspace_memory_region", slot=0, guest_phys_addr=0, memory_size=2 << 20,
             userspace_addr=0x7F0000000000), stall_ns)
    add("vm", decode.KVM_CREATE_VCPU, 0, None, 70_000, 12)
    return TraceResult(["prog"], 100, events, StopReason.EXITED, Clock.KERNEL, "kernel", exit_code=0)


def test_the_trace_becomes_a_sequence_with_its_gaps() -> None:
    ex = build_sequence(synthetic_trace(6_000_000))
    assert [s.op for s in ex.sequence.steps] == ["create_vm"] + ["ioeventfd"] * 6 + ["memslot", "vcpu"]
    assert ex.step_events == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert ex.gaps_ns[1:] == [50_000] * 8 and ex.measured_ns[7] == 6_000_000
    assert ex.sequence.steps[2].args["datamatch"] == 1 and ex.sequence.steps[7].args["size"] == 2 << 20
    assert "ioeventfd addr=0xd0001050 len=4 datamatch=0" in ex.sequence_text


def test_a_stall_is_attributed_to_the_registration_that_started_its_grace_period() -> None:
    ex = explain(synthetic_trace(6_000_000), hz=250, platform="vmx", samples=50)
    assert ex.measured_ns[7] >= STALL_NS
    (sentence,) = ex.attributions[7]
    detail = ex.attribution_detail[7]
    assert detail["variant"] == "call_srcu" and detail["transferred"] and detail["gp_kind"] == "normal"
    starter = detail["started_by_ioctl"]
    assert 2 <= starter <= 7  # one of the KVM_IOEVENTFDs, from the model's state
    assert detail["started_by_step"] == starter  # the system fd's ioctl #0 is not a step: step n is ioctl n
    assert f"started by step #{starter} KVM_IOEVENTFD, mmio " in sentence
    assert f"(ioctl #{starter}, call_srcu)" in sentence
    setup = ex.setup_predicted()
    assert setup["call_srcu"]["p50"] > setup["sync"]["p50"]


def test_a_coalesced_mmio_zone_is_decoded_and_becomes_its_op() -> None:
    raw = _raw("struct kvm_coalesced_mmio_zone", addr=0xFEE00000, size=4096)
    d = decode.decode_raw(decode.KVM_REGISTER_COALESCED_MMIO, 0x7200, raw)
    assert d.text == "{addr=0xfee00000, size=4096, pio=0}" and d.fields["size"] == 4096
    r = synthetic_trace(50_000)
    last = r.events[-1].kernel_exit_ns
    assert last is not None
    t = last + 50_000
    r.events.append(IoctlEvent(len(r.events), 100, 100, 4, "vm", decode.KVM_REGISTER_COALESCED_MMIO,
                               "KVM_REGISTER_COALESCED_MMIO", 0x7200, raw, t, t + 3_000, 0, t, t + 3_000))
    ex = build_sequence(r)
    assert ex.sequence.steps[-1].op == "coalesced_mmio"
    assert ex.sequence.steps[-1].args == {"addr": 0xFEE00000, "size": 4096, "pio": False}


def test_a_stall_no_variant_predicts_is_not_pinned_on_anything() -> None:
    """The same set-up, but the stall is in KVM_CREATE_VCPU, which no variant stalls on for this order."""
    r = synthetic_trace(80_000)
    vcpu = r.events[-1]
    vcpu.kernel_exit_ns = vcpu.kernel_enter_ns + 9_000_000  # type: ignore[operator]
    ex = explain(r, hz=250, platform="pvm", samples=50)
    (sentence,) = ex.attributions[8]
    assert "not explained by the model" in sentence and 8 not in ex.attribution_detail


def test_a_command_spanning_lines_stays_one_comment_of_the_saved_sequence() -> None:
    r = synthetic_trace(50_000)
    r.argv = ["python3", "-c", "import os\nos.getpid()\r"]
    ex = build_sequence(r)
    assert ex.sequence_text.splitlines()[0] == "# the KVM set-up of: python3 -c 'import os\\nos.getpid()\\r'"
    assert [s.op for s in ex.sequence.steps][0] == "create_vm"


def _args(tmp_path, **kw):  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from minivmm.files import Output
    base = dict(no_explain=False, sequence_out=None, report_out=Output(str(tmp_path / "report.txt"), "--output"),
                out_format=None, as_json=False, hz=250, platform="vmx", samples=50, timeout=None)
    return SimpleNamespace(**{**base, **kw})


def test_a_stopped_or_failed_explanation_still_writes_the_trace(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C (or SIGTERM, or running out of memory) while the model explains: the trace is written
    without the explanation, one line says so, and Ctrl-C's exit status is given."""
    from minivmm.cli import trace_cmd
    from minivmm.trace import explain as explain_mod

    for exc, code, words in ((KeyboardInterrupt, 130, "interrupted (Ctrl-C)"),
                             (trace_cmd._Terminated, 143, "interrupted (SIGTERM)"),
                             (MemoryError, 0, "failed (MemoryError)")):
        def stop(*_a, exc=exc, **_k):  # type: ignore[no-untyped-def]
            raise exc
        monkeypatch.setattr(explain_mod, "explain_all", stop)
        r = synthetic_trace(6_000_000)
        assert trace_cmd._report(_args(tmp_path), r, ["prog"]) == code
        text = (tmp_path / "report.txt").read_text()
        assert "KVM_SET_USER_MEMORY_REGION" in text and f"explanation {words}" in text
        assert "--- explanation" not in text
        assert f"explanation {words}: the trace is written without it" in capsys.readouterr().err


def test_system_fd_ioctls_go_to_the_newest_vm_of_their_process() -> None:
    from minivmm.trace.explain import vms_of
    r = synthetic_trace(50_000)
    t = (r.events[-1].kernel_exit_ns or 0) + 50_000
    r.events.append(IoctlEvent(len(r.events), 100, 100, 3, "system", decode.KVM_CREATE_VM, "KVM_CREATE_VM", 0, None,
                               t, t + 1000, 7, t, t + 1000))
    r.events.append(IoctlEvent(len(r.events), 100, 100, 3, "system", decode.KVM_CHECK_EXTENSION,
                               "KVM_CHECK_EXTENSION", 1, None, t + 2000, t + 2500, 1, t + 2000, t + 2500))
    r.events.append(IoctlEvent(len(r.events), 100, 100, 7, "vm1", decode.KVM_CREATE_VCPU, "KVM_CREATE_VCPU", 0,
                               None, t + 3000, t + 9000, 8, t + 3000, t + 9000))
    first, second = vms_of(r)
    assert (first.role, first.created, second.role, second.created) == ("vm", 1, "vm1", 10)
    assert first.rows == list(range(1, 10)) and second.rows == [10, 11, 12]
    assert (first.vcpus, second.vcpus) == (["vcpu0"], ["vm1.vcpu0"])


def test_the_kernel_s_srcu_timer_is_set_beside_the_model_s_attribution() -> None:
    """Synthetic SRCU events: the registration (#2) arms the grace-period timer; it fires during the
    stalled memslot (#8, step 7) and process_srcu runs; a timer another task armed, and one that is not SRCU's
    (no process_srcu queued after it), are not taken for it."""
    from minivmm.trace import srcu_check as sc
    from minivmm.tracefs import Record
    r = synthetic_trace(6_000_000)
    reg, mem = r.events[2], r.events[8]  # the first registration; the memslot (step 7)
    assert mem.kernel_enter_ns is not None and reg.kernel_enter_ns is not None
    t_arm = reg.kernel_enter_ns + 500
    fire = mem.kernel_enter_ns + 4_000_000
    timeline = sc.SrcuTimeline(threads={100})
    timeline.feed([
        Record(t_arm, 0, sc.TIMER_START, 100, (0xA0,)),                  # SRCU's timer, armed in #2
        Record(t_arm + 10, 0, sc.TIMER_START, 100, (0xB0,)),             # another delayed work of ours
        Record(t_arm + 20, 1, sc.TIMER_START, 999, (0xC0,)),             # someone else's
        Record(fire - 1000, 1, sc.TIMER_EXPIRE, 0, (0xB0,)),             # fires; nothing SRCU queued
        Record(fire - 900, 1, sc.TIMER_EXPIRE, 0, (0xC0,)),
        Record(fire, 0, sc.TIMER_EXPIRE, 0, (0xA0,)),
        Record(fire + 2000, 0, sc.QUEUE, 0, (0x80,)),                     # process_srcu queued by it
        Record(fire + 9000, 1, sc.EXECUTE, 7, (0x80, 0xFFFF)),            # and run by a kworker
    ])
    assert timeline.srcu_timers() == {0xA0}
    ex = explain(r, hz=250, platform="vmx", samples=50)
    checks = sc.check_stalls(ex, type(r)(**{**r.__dict__, "srcu": timeline}), [7])
    check = checks[7]
    assert check.kernel is not None and check.kernel.armed_in_ioctl == 2 and check.kernel.fired_ns == fire
    assert check.kernel.processed_ns == fire + 9000
    assert check.agrees == (ex.attribution_detail[7]["started_by_ioctl"] == 2)
    assert check.armed_in_step == 2  # step n is ioctl n here (ioctl #0 on the system fd is no step)
    line = check.describe(lambda k: ioctl_ref(ex, r.events, k))
    assert "armed during step #2 KVM_IOEVENTFD, mmio 0xd0000050 (ioctl #2) " in line and "fired at +4.00 ms" in line
    if check.model_started_by is not None:
        assert check.model_started_by_step == check.model_started_by
        assert f"model: grace period started by step #{check.model_started_by} (ioctl #{check.model_started_by})" \
            in line
    assert check.to_json()["timer_armed_by_step"] == 2
    nothing = sc.check_stalls(ex, type(r)(**{**r.__dict__, "srcu": sc.SrcuTimeline(threads={100})}), [7])[7]
    assert nothing.kernel is None and not nothing.agrees and "no SRCU grace-period timer" in nothing.describe(str)


def test_a_stall_the_model_does_not_explain_is_flagged_only_if_it_returned_after_a_grace_period() -> None:
    """The model predicts no stall in KVM_CREATE_VCPU; an SRCU timer armed earlier fires while it is slow.
    If the call returned right after that grace period's process_srcu, the kernel says it waited for it
    (a disagreement); if long after, the timer only happened to fire meanwhile."""
    from minivmm.trace import srcu_check as sc
    from minivmm.tracefs import Record
    r = synthetic_trace(80_000)
    vcpu = r.events[-1]
    assert vcpu.kernel_enter_ns is not None
    vcpu.kernel_exit_ns = vcpu.kernel_enter_ns + 9_000_000
    ex = explain(r, hz=250, platform="pvm", samples=50)
    armed = r.events[2].kernel_enter_ns or 0
    for processed_at, agrees in ((8_800_000, False), (2_000_000, True)):
        timeline = sc.SrcuTimeline(threads={100})
        fire = vcpu.kernel_enter_ns + processed_at - 10_000
        timeline.feed([Record(armed, 0, sc.TIMER_START, 100, (0xA0,)), Record(fire, 0, sc.TIMER_EXPIRE, 0, (0xA0,)),
                       Record(fire + 1, 0, sc.QUEUE, 0, (0x80,)),
                       Record(vcpu.kernel_enter_ns + processed_at, 1, sc.EXECUTE, 7, (0x80, 1))])
        check = sc.check_stalls(ex, type(r)(**{**r.__dict__, "srcu": timeline}), [8])[8]
        assert check.model_started_by is None and check.agrees is agrees
