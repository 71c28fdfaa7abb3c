"""The explanation of a trace, without KVM: a synthetic trace of a known set-up (the events a tracer
would have recorded) becomes a sequence, is predicted under every variant, and its stall is attributed
by the kernel model to the registration whose grace period it waited for."""

from __future__ import annotations

from minivmm.trace import decode
from kernel_model.stats import STALL_NS
from minivmm.trace.explain import build_sequence, explain
from minivmm.trace.syscalls import ffi
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
                        decode.request_name(request), arg, raw, t, t + dur, ret, t, t + dur)
        events.append(ev)
        t += dur + 50_000

    add("system", decode.REQUESTS["KVM_GET_API_VERSION"], 0, None, 1_000, 12)
    add("system", decode.KVM_CREATE_VM, 0, None, 200_000, 4)
    for i in range(6):
        add("vm", decode.KVM_IOEVENTFD, 0x7000, _raw("struct kvm_ioeventfd", addr=0xD0000050 + (i // 2) * 0x1000,
                                                      len=4, datamatch=i % 2, fd=5 + i,
                                                      flags=decode.lib.KVM_IOEVENTFD_FLAG_DATAMATCH), 2_000)
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
    assert f"started by KVM_IOEVENTFD #{starter} (call_srcu)" in sentence
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
