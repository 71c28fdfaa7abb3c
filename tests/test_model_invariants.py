"""Each invariant has a scenario that breaks it, and the model catches it; correct variants keep all."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_model.invariants import InvariantChecker, ViolationKind
from kernel_model.kvm_io_bus import KvmBus
from kernel_model.kvm_main import KvmModel
from kernel_model.platforms import get_platform
from kernel_model.sim import Sim
from kernel_model.variants import MAIN_VARIANTS, Variant, get_variant

MMIO = KvmBus.KVM_MMIO_BUS

#: A deliberately broken variant: frees the old bus at once, without waiting for readers.
KFREE_NOW = Variant("kfree_now", "kfree(old) with no grace period (broken)", "test",
                    lambda kvm, old: kvm.kfree_bus(old))


def model(variant) -> KvmModel:
    v = variant if isinstance(variant, Variant) else get_variant(variant)
    return KvmModel(Sim(250, 0.5), v, get_platform("pvm"))


def kinds(kvm: KvmModel) -> set[ViolationKind]:
    return {v.kind for v in kvm.checker.violations}


def test_use_after_free_is_caught_when_the_old_bus_is_freed_under_a_reader():
    kvm = model(KFREE_NOW)
    r = kvm.vcpu_readers  # noqa: F841  (no running vCPUs: the reader is driven by hand)
    from kernel_model.kvm_main import Reader
    reader = Reader(kvm, "vcpu0")
    reader.begin()
    reader.get_bus(MMIO)
    kvm.ioeventfd(0xD0000000, 4)   # publishes v1 and frees v0 while the reader still holds it
    reader.end()
    assert ViolationKind.USE_AFTER_FREE in kinds(kvm)


def test_no_use_after_free_when_the_grace_period_waits_for_the_reader():
    for variant in MAIN_VARIANTS:
        kvm = model(variant)
        from kernel_model.kvm_main import Reader
        reader = Reader(kvm, "vcpu0")
        reader.begin()
        reader.get_bus(MMIO)
        kvm.sim.at(kvm.sim.now + 3_000_000, reader.end)  # the reader leaves 3 ms later
        kvm.ioeventfd(0xD0000000, 4)
        kvm.settle(100_000_000)
        assert not kvm.checker.violations, variant
        assert kvm.buses_freed >= 1


def test_long_term_reference_and_stale_bus_are_caught():
    kvm = model("call_srcu")
    from kernel_model.kvm_main import Reader
    reader = Reader(kvm, "vcpu0")
    reader.begin()
    kept = reader.get_bus(MMIO)       # a pointer kept past the section: what kvm_get_bus() must not give
    reader.end()
    kvm.ioeventfd(0xD0000000, 4)      # the registration returns: v1 is published
    reader.begin()
    handled, _, version = reader.write(MMIO, 0xD0000000, 4, 1, bus=kept)
    reader.end()
    assert not handled and version == 0   # the stale bus does not have the new doorbell
    assert {ViolationKind.LONG_TERM_REFERENCE, ViolationKind.STALE_BUS} <= kinds(kvm)


def test_a_reader_that_begins_after_the_registration_sees_it():
    for variant in MAIN_VARIANTS:
        kvm = model(variant)
        p = kvm.ioeventfd(0xD0000000, 4)
        from kernel_model.kvm_main import Reader
        reader = Reader(kvm, "vcpu0")
        reader.begin()
        handled, dev, version = reader.write(MMIO, 0xD0000000, 4, 9)
        reader.end()
        assert handled and dev is p and version == 1
        assert not kvm.checker.violations


def test_teardown_without_barrier_is_caught_and_with_barrier_is_clean():
    bad = model("call_srcu_no_barrier")
    bad.ioeventfd(0xD0000000, 4)
    bad.destroy_vm()
    assert ViolationKind.TEARDOWN_WITHOUT_BARRIER in kinds(bad)
    assert bad.srcu.warnings and "srcu_barrier" in bad.srcu.warnings[-1].message
    good = model("call_srcu")
    good.ioeventfd(0xD0000000, 4)
    t0 = good.sim.now
    good.destroy_vm()
    assert not good.checker.violations and not good.srcu.warnings
    assert good.sim.now - t0 > 1_000_000  # srcu_barrier() waited for the normal grace period


def test_callback_after_cleanup_is_caught():
    kvm = model("call_srcu")
    kvm.ioeventfd(0xD0000000, 4)
    kvm.srcu.cleaned_up = True          # as if cleanup_srcu_struct() had already run
    kvm.settle(100_000_000)
    assert ViolationKind.CALLBACK_AFTER_CLEANUP in kinds(kvm)


def test_strict_checker_raises_at_the_first_violation():
    kvm = KvmModel(Sim(250, 0.5), KFREE_NOW, get_platform("pvm"), InvariantChecker(strict=True))
    from kernel_model.kvm_main import Reader
    reader = Reader(kvm, "r")
    reader.begin()
    reader.get_bus(MMIO)
    try:
        kvm.ioeventfd(0xD0000000, 4)
    except AssertionError as e:
        assert "use-after-free" in str(e)
    else:
        raise AssertionError("the strict checker did not raise")


ops = st.lists(st.one_of(
    st.tuples(st.just("reg"), st.integers(0, 7)),
    st.tuples(st.just("unreg"), st.integers(0, 7)),
    st.tuples(st.just("begin"), st.integers(0, 2)),
    st.tuples(st.just("access"), st.integers(0, 2), st.integers(0, 7)),
    st.tuples(st.just("end"), st.integers(0, 2)),
    st.tuples(st.just("wait"), st.integers(1, 30_000_000)),
    st.tuples(st.just("vcpu"), st.integers(0, 3)),
), max_size=40)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(MAIN_VARIANTS), st.floats(0, 0.999), ops)
def test_random_operations_keep_every_invariant_under_the_correct_variants(variant, phase, script):
    from kernel_model.kvm_host import KvmIoctlError
    from kernel_model.kvm_main import Reader
    kvm = KvmModel(Sim(250, phase), get_variant(variant), get_platform("vmx"), InvariantChecker(strict=True))
    readers = [Reader(kvm, f"r{i}") for i in range(3)]
    registered: set[int] = set()
    for op in script:
        kind = op[0]
        if kind in ("reg", "unreg", "vcpu") and any(r.in_section for r in readers):
            # A reader blocks synchronize_srcu(): end the sections a little later, as vCPUs would.
            for r in readers:
                if r.in_section:
                    kvm.sim.at(kvm.sim.now + 50_000, (lambda rr: (lambda: rr.end() if rr.in_section else None))(r))
        if kind == "reg" and op[1] not in registered:
            kvm.ioeventfd(0xD0000000 + op[1] * 0x10, 4)
            registered.add(op[1])
        elif kind == "unreg" and op[1] in registered:
            kvm.ioeventfd_deassign(0xD0000000 + op[1] * 0x10, 4)
            registered.discard(op[1])
        elif kind == "begin" and not readers[op[1]].in_section:
            readers[op[1]].begin()
        elif kind == "access" and readers[op[1]].in_section:
            handled, _, _ = readers[op[1]].write(MMIO, 0xD0000000 + op[2] * 0x10, 4, 0)
            assert handled == (op[2] in registered)
        elif kind == "end" and readers[op[1]].in_section:
            readers[op[1]].end()
        elif kind == "wait":
            kvm.sim.run_until(kvm.sim.now + op[1])
        elif kind == "vcpu":
            try:
                kvm.create_vcpu(op[1])
            except KvmIoctlError:
                pass
    for r in readers:
        if r.in_section:
            r.end()
    kvm.destroy_vm()
    kvm.settle(200_000_000)
    assert not kvm.checker.violations
