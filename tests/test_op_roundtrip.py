"""Each op's inverse, on real KVM: a sequence of every op the host can issue, with random arguments, is
issued by the host issuers (``minivmm.timing.host_ops``) in a child process traced by ``minivmm
trace``'s tracer; the trace, turned back into a sequence (``OpSpec.from_traced`` through
``minivmm.trace.explain.build_sequence``), has the same ops with the same arguments."""

from __future__ import annotations

import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel_model.ops import OPS, StructArg
from kernel_model.sequences import Sequence, format_sequence, parse_sequence, validate

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

#: The child: issue the sequence once through the host issuers, as ``minivmm timing`` does.
CHILD = """
import signal, sys
from kernel_model.sequences import load_sequence
from minivmm.timing.runner import SequenceRunner
from minivmm.vmm.vcpu_loop import KICK_SIGNAL
signal.signal(KICK_SIGNAL, lambda signum, frame: None)  # a vCPU thread is stopped with it
runner = SequenceRunner(load_sequence(sys.argv[1]))
runner.run_once()
runner.close()
"""

#: Every op but ``ioctl``, which the host does not issue (it pauses for the traced cost instead).
ISSUED = set(OPS) - {"ioctl"}

PAGE = 4096
u64 = st.integers(0, (1 << 64) - 1)


@st.composite
def every_op(draw: st.DrawFn) -> Sequence:
    """create_vm, then every other issued op once or twice (an assign and its deassign), with random
    arguments the kernel accepts, ending with the vCPUs' first KVM_RUN (a trace's set-up ends there)."""
    lines = ["create_vm", f"memslot slot=0 base=0 size={draw(st.integers(2, 64)) * PAGE:#x}"]
    lines.append(f"memslot slot={draw(st.integers(1, 32763))} base={draw(st.integers(1 << 20, 1 << 24)) * PAGE:#x} "
                 f"size={draw(st.integers(1, 64)) * PAGE:#x}"
                 + " readonly" * draw(st.booleans()) + " log_dirty" * draw(st.booleans()))
    lines += ["irqchip", "pit2" + " speaker_dummy" * draw(st.booleans())]
    if draw(st.booleans()):  # a port I/O zone, clear of the loop guest's port 0x80
        lines.append(f"coalesced_mmio addr={draw(st.integers(0x100, 0xFF00)):#x} size={draw(st.integers(1, 0xFF))} pio")
    else:
        lines.append(f"coalesced_mmio addr={draw(st.integers(1 << 32, 1 << 40)):#x} "
                     f"size={draw(st.integers(1, 64)) * PAGE:#x}")
    gsi = draw(st.integers(0, 23))
    lines += [f"gsi_routing entries={draw(st.integers(0, 256))}", f"irqfd gsi={gsi}", f"irqfd gsi={gsi} deassign"]
    pio = draw(st.booleans())
    length = draw(st.sampled_from([0, 1, 2, 4, 8]))
    addr = draw(st.integers(0x100, 0xFFFF) if pio else st.integers(0, 1 << 40))
    datamatch = "" if length == 0 or draw(st.booleans()) else f" datamatch={draw(u64):#x}"
    ioeventfd = f"addr={addr:#x} len={length}{datamatch}" + " pio" * pio
    lines += [f"ioeventfd {ioeventfd}", f"ioeventfd_deassign {ioeventfd}"]
    # KVM_CAP_X2APIC_API (a VM capability x86 hosts have): args[0] is a mask of its two flags.
    lines.append(f"enable_cap cap=129 arg0={draw(st.integers(0, 3))}")
    lines.append(f"tss_addr addr={draw(st.integers(0x100, 0xFFFFC)) * PAGE:#x}")
    ids = draw(st.lists(st.integers(0, 255), min_size=1, max_size=2, unique=True))
    lines += [f"vcpu id={i}" for i in ids] + [f"run vcpu={i}" for i in ids]
    seq = parse_sequence("\n".join(lines) + "\n", "roundtrip")
    assert {s.op for s in seq.steps} == ISSUED
    return seq


def ioctl_steps(seq: Sequence) -> list:
    """The steps that issue an ioctl of their own: not ``ioctl`` (not issued) and not the teardown (a
    close(), which the tracer's ioctl records do not hold)."""
    return [s for s in seq.steps if s.op != "ioctl" and s.spec.ioctl is not None]


def traced_args(seq: Sequence) -> list[tuple[str, dict[str, object]]]:
    """Each ioctl step's op and the arguments its ioctl carries (``Arg.traced``)."""
    return [(s.op, {a.name: s.full_args[a.name] for a in s.spec.args if a.traced}) for s in ioctl_steps(seq)]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=every_op())
@pytest.mark.slow
def test_what_the_host_issues_is_traced_back_to_the_same_arguments(seq: Sequence, tmp_path_factory) -> None:
    from minivmm.host import read_host_info
    from minivmm.trace.explain import build_sequence
    from minivmm.trace.tracer import Tracer
    validate(seq, read_host_info().platform or "pvm")
    path = tmp_path_factory.mktemp("roundtrip") / "every-op.seq"
    path.write_text(format_sequence(seq))
    # A generous timeout: a step that hangs on the host (a vCPU waiting for a SIPI) fails, not blocks.
    tracer = Tracer(sys.executable, [sys.executable, "-c", CHILD, str(path)], timeout_s=60)
    tracer.run()
    result = tracer.result
    assert result is not None and result.exit_code == 0, result and result.stop_reason
    # The runner's own other ioctls (the vCPUs' registers, say) become "ioctl" steps: left out here.
    ex = build_sequence(result)
    assert traced_args(ex.sequence) == traced_args(seq)
    # What each op says it issues (its strace form and a reproducer's call come from it) is what was
    # issued: the same fd role, request and every struct value it knows.
    events = {e.index: e for e in result.events}
    issued = [events[i] for s, i in zip(ex.sequence.steps, ex.step_events) if s.op != "ioctl"]
    for step, ev in zip(ioctl_steps(seq), issued):
        assert step.spec.ioctl is not None
        call = step.spec.ioctl(step.full_args)
        assert (call.role, call.request) == (ev.role, ev.name)
        if isinstance(call.arg, StructArg):
            # A field whose flag is clear (datamatch without KVM_IOEVENTFD_FLAG_DATAMATCH) decodes as None.
            gated = {f.name for f in call.arg.struct.fields if f.only_with}
            known = {k: v for k, v in call.arg.values.items()
                     if v is not None and not (k in gated and ev.decoded.fields[k] is None)}
            assert known == {k: ev.decoded.fields[k] for k in known}, step
        else:
            assert call.arg == ev.arg, step
