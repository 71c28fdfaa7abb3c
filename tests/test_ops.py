"""One spec per sequence op: every op has its model side and its host side, and one validation serves
``minivmm model`` and ``minivmm timing`` alike."""

from __future__ import annotations

import re

import pytest

from kernel_model.ops import OPS
from kernel_model.sequences import SEQUENCES, SequenceError, Step, parse_sequence, validate


def test_every_op_has_a_host_step():
    from minivmm.timing.host_ops import HOST_OPS
    assert set(HOST_OPS) == set(OPS)


def test_every_op_has_a_label_and_an_strace_form_for_its_minimal_arguments():
    for op in OPS.values():
        minimal = {a.name: (0x1000 if a.kind in ("int", "size") else 10_000 if a.kind == "time" else "KVM_X")
                   for a in op.args if a.required}
        step = Step(op.name, minimal)
        assert step.label
        assert step.strace(0.001).startswith("close(" if op.close is not None else "ioctl(")


def test_a_repeated_argument_is_an_error():
    with pytest.raises(SequenceError, match=r"f:2: id given twice"):
        parse_sequence("create_vm\nvcpu id=0 id=1", "f")


@pytest.mark.parametrize("text,fragment", [
    ("create_vm\nrun vcpu=0", r"KVM_RUN, vcpu 0 .*has not been created"),
    ("create_vm\nmemslot slot=0 base=0 size=1000", "page size"),
    ("create_vm\nmemslot slot=0 base=0 size=1M\nmemslot slot=1 base=512K size=1M", "overlaps slot 0"),
    ("create_vm\nioeventfd_deassign addr=0x10 len=4", "ENOENT"),
    ("create_vm\nioeventfd addr=0x10 len=4\nioeventfd addr=0x10 len=4", "EEXIST"),
    ("create_vm\nioeventfd addr=0x10 len=3", "EINVAL"),
    ("create_vm\nvcpu id=0\nvcpu id=0", "EEXIST"),
    ("create_vm\nvcpu id=0\nirqchip", "EINVAL"),
    ("create_vm\nmemslot slot=0 base=0x100000 size=1M\nvcpu id=0\nrun vcpu=0", "covering 0x1000"),
])
def test_validation_refuses_what_the_kernel_or_the_runner_would(text, fragment):
    seq = parse_sequence(text, "f")
    with pytest.raises(SequenceError) as e:
        validate(seq, "vmx")
    message = str(e.value)
    assert "\n" not in message
    assert re.search(fragment, message), message


def test_every_named_sequence_validates_on_every_platform_it_was_written_for():
    for seq in SEQUENCES.values():
        validate(seq, "vmx")
        validate(seq, "pvm")


def test_the_timing_runner_refuses_through_the_same_validation():
    from minivmm.timing.runner import check_runnable
    seq = parse_sequence("create_vm\nioeventfd_deassign addr=0x10 len=4", "f")
    with pytest.raises(SequenceError, match="ENOENT"):
        check_runnable(seq, "pvm")


# --- reading sequence files: bounded, regular files only, content never echoed ----------------------

def _load_error(path: str) -> str:
    from kernel_model.sequences import load_sequence
    with pytest.raises(SequenceError) as e:
        load_sequence(path)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_dev_zero_is_refused_without_reading_it():
    assert "not a regular file" in _load_error("/dev/zero")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    import os
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in _load_error(str(fifo))


def test_a_directory_is_refused(tmp_path):
    assert "not a regular file" in _load_error(str(tmp_path))


def test_a_64_mb_file_is_refused_by_its_size(tmp_path):
    big = tmp_path / "big.seq"
    with open(big, "wb") as f:
        f.truncate(64 << 20)  # sparse: nothing is written, and nothing must be read
    assert "limit" in _load_error(str(big))


def test_a_file_that_is_not_a_sequence_is_not_quoted_back(tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$s3cr3tsalt$hashhashhash:19000:0:99999:7:::\n")
    message = _load_error(str(secret))
    assert "s3cr3t" not in message and "hashhash" not in message and "19000" not in message
    assert ":1:" in message


def test_binary_content_is_refused_without_quoting_it(tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(b"\xff\xfesecret")
    message = _load_error(str(blob))
    assert "UTF-8" in message and "secret" not in message


def test_a_missing_file_names_the_named_sequences(tmp_path):
    assert "neither a named sequence" in _load_error(str(tmp_path / "nope"))


@pytest.mark.parametrize("text", ["create_vm\nvcpu id=0 id=1", "create_vm\nioeventfd_deassign addr=0x10 len=4",
                                  "create_vm\nrun vcpu=0"])
def test_model_and_timing_refuse_a_bad_sequence_file_with_one_line(tmp_path, capsys, text):
    from minivmm.cli.app import main
    path = tmp_path / "bad.seq"
    path.write_text(text)
    for argv in (["model", "--sequence", str(path), "-n", "10"],
                 ["timing", "--sequence", str(path), "--hz", "250", "--platform", "pvm", "-r", "1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and str(path) in err, err


# --- the set-up ops of a real VMM, in the model and on the host ---------------------------------------

QEMU_LIKE = """
create_vm
tss_addr addr=0xfffbd000
ioctl name=KVM_SET_IDENTITY_MAP_ADDR cost=20us
memslot slot=0 base=0 size=16M
coalesced_mmio addr=0xfee00000 size=4K
memslot slot=1 base=0xfffc0000 size=256K readonly
memslot slot=1 base=0xfffc0000 size=256K readonly log_dirty
irqchip
pit2 speaker_dummy
gsi_routing entries=24
irqfd gsi=5
irqfd gsi=5 deassign
irqfd gsi=9 deassign
ioeventfd addr=0xcf8 len=4 pio
vcpu id=0
run vcpu=0
"""


def test_the_uapi_the_model_writes_down_matches_the_header():
    """kernel_model runs without the compiled header, so kvm_uapi writes down the structs' fields and
    the flag bits it prints and reads: each must be <linux/kvm.h>'s (as cffi compiled it here)."""
    from kernel_model import kvm_uapi
    from minivmm.kvm.uapi import ffi, lib, request_number
    checked = set()
    for request, struct in kvm_uapi.REQUEST_STRUCTS.items():
        if request_number(request) is None:
            continue  # e.g. KVM_SET_USER_MEMORY_REGION2 on older headers
        header = [name for name, f in ffi.typeof(struct.ctype).fields if not name.startswith("pad")
                  and not (f.type.kind == "array" and f.type.length is None)]  # a flexible array: not read
        written = [f.name for f in struct.fields if f.style != "abbrev"]
        assert written == header, struct.ctype
        for f in struct.fields:
            for flag in f.flags:
                value = getattr(lib, flag.name, None)
                assert value is not None or flag.name == "KVM_MEM_GUEST_MEMFD", flag.name  # newer than some headers
                assert value in (None, flag.bit), flag.name
        checked.add(request)
    assert len(checked) >= len(kvm_uapi.REQUEST_STRUCTS) - 1
    from kernel_model import kvm_host
    assert kvm_host.KVM_CAP_SPLIT_IRQCHIP == lib.KVM_CAP_SPLIT_IRQCHIP
    assert (kvm_host.KVM_MEM_READONLY, kvm_host.KVM_MEM_LOG_DIRTY_PAGES) == (lib.KVM_MEM_READONLY,
                                                                             lib.KVM_MEM_LOG_DIRTY_PAGES)


def test_pit2_registers_its_ports_on_the_pio_bus():
    from kernel_model.kvm_io_bus import KvmBus
    from kernel_model.kvm_main import KvmModel
    from kernel_model.platforms import get_platform
    from kernel_model.sim import Sim
    from kernel_model.variants import get_variant
    kvm = KvmModel(Sim(250), get_variant("call_srcu"), get_platform("vmx"))
    kvm.create_irqchip()
    before = kvm.registrations
    kvm.create_pit2(speaker_dummy=True)
    assert kvm.registrations == before + 2
    assert kvm.claimant(KvmBus.KVM_PIO_BUS, 0x43, 1).name == "pit"
    assert kvm.claimant(KvmBus.KVM_PIO_BUS, 0x61, 1).name == "pit-speaker"
    assert kvm.claimant(KvmBus.KVM_PIO_BUS, 0x44, 1) is None


@pytest.mark.parametrize("text,fragment", [
    ("create_vm\npit2", "ENOENT"),                                          # no in-kernel PIC
    ("create_vm\nirqchip\npit2\npit2", "EEXIST"),
    ("create_vm\nirqfd gsi=1", "EINVAL"),                                   # no irqchip
    ("create_vm\ngsi_routing entries=4", "EINVAL"),
    ("create_vm\nirqchip\ngsi_routing entries=5000", "EINVAL"),
    ("create_vm\nvcpu id=0\nenable_cap cap=121", "EEXIST"),                 # split irqchip after vCPUs
    ("create_vm\nmemslot slot=0 base=0 size=1M\nmemslot slot=0 base=0 size=1M readonly", "READONLY"),
    ("create_vm\nmemslot slot=0x10000 base=0 size=1M", "no address space 1"),  # pvm: one address space
])
def test_the_new_ops_are_refused_where_the_kernel_refuses_them(text, fragment):
    with pytest.raises(SequenceError, match=fragment):
        validate(parse_sequence(text, "f"), "pvm")


def test_an_address_space_1_memslot_is_separate_on_vmx():
    validate(parse_sequence("create_vm\nmemslot slot=0 base=0 size=1M\nmemslot slot=0x10000 base=0 size=1M", "f"),
             "vmx")


def test_split_irqchip_installs_the_apic_access_page_on_vmx_and_waits_on_irq_srcu_only():
    from kernel_model.predict import predict
    seq = parse_sequence("create_vm\nenable_cap cap=121 arg0=24\nioeventfd addr=0xd0000000 len=4\n"
                         "gsi_routing entries=24\nvcpu id=0", "f")
    p = predict(seq, "call_srcu", 250, "vmx", samples=20)
    routing, vcpu = p.steps[3].stats(), p.steps[4].stats()
    # The routing's grace period is kvm->irq_srcu's, expedited and idle: no jiffy-scale wait even
    # though the ioeventfd left a normal grace period pending on kvm->srcu ...
    assert routing["max"] < 1000
    # ... which the first vCPU's APIC-access page memslot then waits for (a split irqchip puts the
    # local APICs in the kernel).
    assert vcpu["p50"] > 1000
    assert seq.steps[1].modelled and not parse_sequence("create_vm\nenable_cap cap=7", "f").steps[1].modelled


def test_an_unmodelled_ioctl_is_its_cost_and_says_so():
    from kernel_model.predict import predict
    seq = parse_sequence("create_vm\nioctl name=KVM_SET_TSS_ADDR cost=123us", "f")
    p = predict(seq, "call_srcu", 250, "pvm", samples=5)
    assert p.steps[1].durations == [123_000] * 5
    assert not seq.steps[1].modelled and "not modelled" in seq.steps[1].label


def test_the_qemu_like_sequence_validates_and_predicts():
    from kernel_model.predict import predict
    seq = parse_sequence(QEMU_LIKE, "qemu-like")
    validate(seq, "pvm")
    for variant in ("sync", "call_srcu"):
        p = predict(seq, variant, 250, "pvm", samples=5)
        assert not p.violations


@pytest.mark.kvm
def test_every_op_runs_on_the_host():
    """Each op's host step issues its real ioctl (the sequence uses every op)."""
    from minivmm.timing.runner import measure
    seq = parse_sequence(QEMU_LIKE + "enable_cap cap=129\nioeventfd_deassign addr=0xcf8 len=4 pio\n", "all-ops")
    assert {s.op for s in seq.steps} == set(OPS)
    reps, _ = measure(seq, 2, jitter=False, hz=250, platform="pvm")
    for rep in reps:
        assert len(rep.durations_ns) == len(seq.steps) and min(rep.durations_ns) > 0
        names = [r.name for r in rep.records if r is not None]
        for name in ("KVM_CREATE_PIT2", "KVM_SET_GSI_ROUTING", "KVM_IRQFD", "KVM_ENABLE_CAP",
                     "KVM_REGISTER_COALESCED_MMIO"):
            assert name in names
        # The un-modelled ioctl is not issued: the host pauses for its cost instead.
        assert "KVM_SET_TSS_ADDR" in names
        assert "KVM_SET_IDENTITY_MAP_ADDR" not in names and rep.durations_ns[2] >= 20_000
        # The host's records print each struct as the model's strace form does (one formatter):
        # every field the model knows reads the same; the host also knows fds and host addresses.
        for step, rec in zip(seq.steps, rep.records):
            if rec is None or step.op in ("ioctl", "run"):
                continue
            model = step.strace(0).split(", ", 2)[2].rsplit(") = ", 1)[0]
            assert rec.name == step.spec.ioctl(step.full_args).request
            if model.startswith("{"):
                host_fields = set(rec.arg.strip("{}").split(", "))
                assert set(model.strip("{}").split(", ")) - {"..."} <= host_fields, (model, rec.arg)
            else:
                assert model == rec.arg


def test_the_readme_documents_every_op():
    from conftest import ROOT
    text = (ROOT / "kernel_model" / "README.md").read_text()
    section = text[text.index("## Sequence files"):]
    for name in list(OPS) + ["gap", "sleep"]:
        assert f"| `{name}` |" in section, name
    import kernel_model.sequences as sequences
    for name in OPS:
        assert f"    {name}" in (sequences.__doc__ or ""), name


def test_format_sequence_round_trips_every_named_sequence_and_every_op():
    from kernel_model.sequences import format_sequence
    everything = parse_sequence(QEMU_LIKE + "enable_cap cap=121 arg0=24\nioeventfd_deassign addr=0xcf8 len=4 pio\n"
                                "gap 1234ns\nirqfd gsi=3\nsleep 1.5ms\nmemslot slot=0x10002 base=0x100000 size=3K",
                                "all")
    for seq in [*SEQUENCES.values(), everything]:
        text = format_sequence(seq)
        again = parse_sequence(text, seq.name)
        assert [(s.op, s.full_args, s.gap_ns) for s in again.steps] == \
               [(s.op, s.full_args, s.gap_ns) for s in seq.steps], text


def test_tss_addr_is_a_fixed_cost_on_x86_and_refused_on_arm64():
    from kernel_model.costs import Costs
    from kernel_model.predict import predict
    seq = parse_sequence("create_vm\ntss_addr addr=0xfffbd000", "f")
    assert predict(seq, "call_srcu", 250, "vmx", samples=3).steps[1].durations == [Costs().set_tss_addr] * 3
    with pytest.raises(SequenceError, match="ENOTTY"):
        validate(seq, "arm64")


def test_pit2_inhibits_the_apic_access_page_on_svm_with_avic_but_not_on_vmx():
    """kvm_create_pit() starts the PIT in reinject mode, which sets APICV_INHIBIT_REASON_PIT_REINJ."""
    from kernel_model.kvm_main import KvmModel
    from kernel_model.platforms import get_platform
    from kernel_model.sim import Sim
    from kernel_model.variants import get_variant
    swaps = {}
    for platform in ("svm", "vmx"):
        kvm = KvmModel(Sim(250), get_variant("sync"), get_platform(platform))
        kvm.create_irqchip()
        kvm.create_pit2()
        before = kvm.memslot_swaps
        kvm.create_vcpu(0)
        swaps[platform] = kvm.memslot_swaps - before
    assert swaps["svm"] == 0 and swaps["vmx"] == get_platform("vmx").memslot_address_spaces


@pytest.mark.kvm
def test_a_memslot_moved_under_the_loop_guest_runs_it():
    """A move keeps the slot's userspace address (KVM requires it) and the loop guest lands at 0x1000."""
    from minivmm.timing.runner import measure
    seq = parse_sequence("create_vm\nmemslot slot=0 base=0x100000 size=1M\nmemslot slot=0 base=0 size=1M\n"
                         "vcpu id=0\nrun vcpu=0", "moved")
    reps, _ = measure(seq, 1, jitter=False, hz=250, platform="pvm")
    assert min(reps[0].durations_ns) > 0


def test_a_coalesced_mmio_zone_is_a_registration_whose_grace_period_the_next_memslot_waits_for():
    """QEMU registers a coalesced-MMIO zone just before its read-only BIOS memslot: under call_srcu the
    zone's kvm_io_bus_register_dev() starts the normal grace period the memslot's swap then waits for
    (found with `minivmm trace` on QEMU 7.2, confirmed with `minivmm timing` on this host)."""
    from kernel_model.explain import explain
    seq = parse_sequence("create_vm\nmemslot slot=0 base=0 size=16M\ncoalesced_mmio addr=0xfee00000 size=4K\n"
                         "memslot slot=1 base=0xfffc0000 size=256K readonly\n", "f")
    stalled = explain(seq, "call_srcu", 250, "pvm", samples=20)[3]
    assert stalled.waited_for_gp and stalled.transferred and stalled.started_by_step == 2
    assert stalled.started_by_call == "call_srcu" and stalled.p50_us > 4000
    synced = explain(seq, "sync", 250, "pvm", samples=20)[3]
    assert synced.p50_us < 1000 and not synced.transferred
    from kernel_model.kvm_io_bus import KvmBus
    from kernel_model.kvm_main import KvmModel
    from kernel_model.platforms import get_platform
    from kernel_model.sim import Sim
    from kernel_model.variants import get_variant
    kvm = KvmModel(Sim(250, 0.0, None), get_variant("call_srcu"), get_platform("pvm"), None)
    kvm.register_coalesced_mmio(0x3F8, 8, pio=True)
    assert [r.addr for r in kvm.buses[KvmBus.KVM_PIO_BUS].range] == [0x3F8]
    with pytest.raises(ValueError, match="size"):
        parse_sequence("create_vm\ncoalesced_mmio addr=0x1000 size=0", "f")


@pytest.mark.kvm
def test_a_vcpu_other_than_the_boot_processor_runs_after_an_irqchip(tmp_path):
    """With an in-kernel LAPIC an AP waits in KVM_RUN for INIT and SIPI, which no step sends: the run
    step makes it runnable first. In a child with a timeout, so that a regression fails, not hangs."""
    import subprocess
    import sys
    path = tmp_path / "ap.seq"
    path.write_text("create_vm\nmemslot slot=0 base=0 size=1M\nirqchip\nvcpu id=0\nvcpu id=1\nrun vcpu=1\n")
    child = ("import sys; from kernel_model.sequences import load_sequence; from minivmm.timing.runner import measure; "
             "reps, _ = measure(load_sequence(sys.argv[1]), 1, jitter=False, hz=250); "
             "print(min(reps[0].durations_ns) > 0)")
    p = subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "True", p.stderr
