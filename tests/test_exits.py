"""The exit decoder, driven with synthetic kvm_run buffers (no KVM needed)."""

from __future__ import annotations

import pytest

from minivmm.kvm.exits import (
    HLT,
    INTERRUPTED,
    ExitReason,
    FailEntry,
    InternalError,
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Shutdown,
    SystemEvent,
    Unsupported,
    decode_exit,
    describe_exit,
    exit_kind,
    exit_reason_name,
)
from minivmm.kvm.uapi import ffi, lib

RUN_SIZE = 4096


def fresh_run():
    buf = ffi.new("char[]", RUN_SIZE)
    return buf, ffi.cast("struct kvm_run *", buf), RUN_SIZE


def test_io_out_single_byte_reads_data_at_data_offset():
    buf, run, base = fresh_run()
    run.exit_reason = lib.KVM_EXIT_IO
    run.io.direction = lib.KVM_EXIT_IO_OUT
    run.io.size = 1
    run.io.port = 0x3F8
    run.io.count = 1
    run.io.data_offset = 0x800
    buf[0x800] = b"H"
    assert decode_exit(run, base) == IoOut(0x3F8, 1, 1, b"H")


def test_io_out_string_carries_every_item():
    buf, run, base = fresh_run()
    run.exit_reason = lib.KVM_EXIT_IO
    run.io.direction = lib.KVM_EXIT_IO_OUT
    run.io.size = 2
    run.io.port = 0x80
    run.io.count = 3
    run.io.data_offset = 0x400
    ffi.memmove(buf + 0x400, b"aabbcc", 6)
    assert decode_exit(run, base) == IoOut(0x80, 2, 3, b"aabbcc")


def test_io_in():
    _, run, base = fresh_run()
    run.exit_reason = lib.KVM_EXIT_IO
    run.io.direction = lib.KVM_EXIT_IO_IN
    run.io.size = 4
    run.io.port = 0xCFC
    run.io.count = 1
    assert decode_exit(run, base) == IoIn(0xCFC, 4, 1)


@pytest.mark.parametrize("length", [1, 2, 4, 8])
def test_mmio_write_keeps_only_len_bytes(length):
    _, run, base = fresh_run()
    run.exit_reason = lib.KVM_EXIT_MMIO
    run.mmio.phys_addr = 0xD0000010
    run.mmio.is_write = 1
    run.mmio.len = length
    for i in range(8):
        run.mmio.data[i] = i + 1
    assert decode_exit(run, base) == MmioWrite(0xD0000010, bytes(range(1, length + 1)))


def test_mmio_read():
    _, run, base = fresh_run()
    run.exit_reason = lib.KVM_EXIT_MMIO
    run.mmio.phys_addr = 0xD0001000
    run.mmio.len = 4
    assert decode_exit(run, base) == MmioRead(0xD0001000, 4)


def test_simple_reasons_and_payloads():
    _, run, base = fresh_run()
    run.exit_reason = lib.KVM_EXIT_HLT
    assert decode_exit(run, base) is HLT
    run.exit_reason = lib.KVM_EXIT_SHUTDOWN
    assert decode_exit(run, base) == Shutdown()
    run.exit_reason = lib.KVM_EXIT_FAIL_ENTRY
    run.fail_entry.hardware_entry_failure_reason = 0x21
    run.fail_entry.cpu = 1
    assert decode_exit(run, base) == FailEntry(0x21, 1)
    run.exit_reason = lib.KVM_EXIT_INTERNAL_ERROR
    run.internal.suberror = lib.KVM_INTERNAL_ERROR_EMULATION
    run.internal.ndata = 2
    run.internal.data[0], run.internal.data[1] = 7, 9
    decoded = decode_exit(run, base)
    assert decoded == InternalError(lib.KVM_INTERNAL_ERROR_EMULATION, (7, 9))
    assert decoded.is_emulation_failure
    run.exit_reason = lib.KVM_EXIT_SYSTEM_EVENT
    run.system_event.type = lib.KVM_SYSTEM_EVENT_RESET
    run.system_event.ndata = 1
    run.system_event.data[0] = 5
    assert decode_exit(run, base) == SystemEvent(lib.KVM_SYSTEM_EVENT_RESET, (5,))


def test_internal_error_ndata_is_clamped():
    _, run, base = fresh_run()
    run.exit_reason = lib.KVM_EXIT_INTERNAL_ERROR
    run.internal.ndata = 1000  # a hostile or buggy value must not read past the array
    assert len(decode_exit(run, base).data) == 16


def test_unknown_reason_is_unsupported_with_its_name():
    _, run, base = fresh_run()
    run.exit_reason = lib.KVM_EXIT_DEBUG
    decoded = decode_exit(run, base)
    assert decoded == Unsupported(lib.KVM_EXIT_DEBUG)
    assert decoded.name == "KVM_EXIT_DEBUG"
    assert exit_reason_name(9999) == "KVM_EXIT_9999"


def test_exit_reason_enum_comes_from_the_header():
    assert ExitReason.MMIO == lib.KVM_EXIT_MMIO
    assert ExitReason.IO == lib.KVM_EXIT_IO
    assert "IO_IN" not in ExitReason.__members__


def test_describe_and_kind():
    assert "port 0x03f8" in describe_exit(IoOut(0x3F8, 1, 1, b"A"))
    assert describe_exit(HLT) == "HLT"
    assert exit_kind(IoOut) == "io_out"
    assert exit_kind(type(INTERRUPTED)) == "interrupted"


def test_equality_is_by_type_and_fields():
    assert HLT != Shutdown()
    assert MmioRead(1, 2) != FailEntry(1, 2)
    assert IoOut(1, 1, 1, b"x") == IoOut(1, 1, 1, b"x")
    assert len({HLT, Shutdown(), INTERRUPTED}) == 3


def test_one_decoder_follows_the_mapping_across_exits():
    buf, run, size = fresh_run()
    from minivmm.kvm.exits import ExitDecoder
    decoder = ExitDecoder(run, size)
    run.exit_reason = lib.KVM_EXIT_HLT
    assert decoder.decode() is HLT
    run.exit_reason = lib.KVM_EXIT_MMIO
    run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = 0x10, 1, 1
    run.mmio.data[0] = 0x42
    assert decoder.decode() == MmioWrite(0x10, b"\x42")


def test_exits_are_immutable():
    e = IoOut(1, 1, 1, b"x")
    with pytest.raises(AttributeError):
        e.port = 2  # type: ignore[misc]


def _io_exit(run, buf, direction, port, size, data_offset=0x800, count=1, data=b""):
    run.exit_reason = lib.KVM_EXIT_IO
    run.io.direction = direction
    run.io.size, run.io.port, run.io.count, run.io.data_offset = size, port, count, data_offset
    if data:
        ffi.memmove(buf + data_offset, data, len(data))


def test_the_decoder_remembers_a_repeated_exit_and_builds_anew_what_differs():
    from minivmm.kvm.exits import ExitDecoder
    buf, run, size = fresh_run()
    decoder = ExitDecoder(run, size)
    _io_exit(run, buf, lib.KVM_EXIT_IO_OUT, 0x3F8, 1, data=b"A")
    first = decoder.decode()
    assert first == IoOut(0x3F8, 1, 1, b"A") and decoder.decode() is first  # built once
    _io_exit(run, buf, lib.KVM_EXIT_IO_OUT, 0x3F8, 1, data=b"B")
    second = decoder.decode()
    assert second == IoOut(0x3F8, 1, 1, b"B")  # other data: another value
    _io_exit(run, buf, lib.KVM_EXIT_IO_OUT, 0x3F8, 1, data=b"A")
    assert decoder.decode() is first  # each value of the port is remembered, not only the last
    _io_exit(run, buf, lib.KVM_EXIT_IO_OUT, 0x3F8, 1, data_offset=0x900, data=b"C")
    assert decoder.decode() == IoOut(0x3F8, 1, 1, b"C")  # data_offset moved: read where it points now
    _io_exit(run, buf, lib.KVM_EXIT_IO_OUT, 0x3F8, 2, data_offset=0x900, data=b"CD")
    assert decoder.decode() == IoOut(0x3F8, 2, 1, b"CD")  # the size is part of the io word
    _io_exit(run, buf, lib.KVM_EXIT_IO_IN, 0x3F8, 1)
    read = decoder.decode()
    assert read == IoIn(0x3F8, 1, 1) and decoder.decode() is read
    _io_exit(run, buf, lib.KVM_EXIT_IO_OUT, 0x80, 2, count=3, data=b"aabbcc")
    assert decoder.decode() == IoOut(0x80, 2, 3, b"aabbcc")
    _io_exit(run, buf, lib.KVM_EXIT_IO_OUT, 0x80, 2, count=3, data=b"xxyyzz")
    assert decoder.decode() == IoOut(0x80, 2, 3, b"xxyyzz")  # string I/O: never remembered
    _io_exit(run, buf, lib.KVM_EXIT_IO_OUT, 0x80, 4, data_offset=0x802, data=b"wxyz")
    assert decoder.decode() == IoOut(0x80, 4, 1, b"wxyz")  # misaligned item: read as bytes


def test_the_decoder_remembers_mmio_reads_by_address_and_length_but_not_writes():
    from minivmm.kvm.exits import ExitDecoder
    buf, run, size = fresh_run()
    decoder = ExitDecoder(run, size)
    run.exit_reason = lib.KVM_EXIT_MMIO
    run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = 0xD0000000, 4, 0
    read = decoder.decode()
    assert read == MmioRead(0xD0000000, 4) and decoder.decode() is read
    run.mmio.len = 2
    assert decoder.decode() == MmioRead(0xD0000000, 2)
    run.mmio.is_write = 1
    run.mmio.data[0], run.mmio.data[1] = 1, 2
    assert decoder.decode() == MmioWrite(0xD0000000, b"\x01\x02")
    run.mmio.data[0] = 9
    assert decoder.decode() == MmioWrite(0xD0000000, b"\x09\x02")


def test_the_decoders_memory_is_bounded_whatever_the_guest_writes(monkeypatch):
    from minivmm.kvm import exits
    monkeypatch.setattr(exits, "MEMO_LIMIT", 16)
    buf, run, size = fresh_run()
    decoder = exits.ExitDecoder(run, size)
    for value in range(1000):
        _io_exit(run, buf, lib.KVM_EXIT_IO_OUT, 0x80, 2, data=value.to_bytes(2, "little"))
        assert decoder.decode() == IoOut(0x80, 2, 1, value.to_bytes(2, "little"))
        run.exit_reason = lib.KVM_EXIT_MMIO
        run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = 0x1000 * value, 1, 0
        assert decoder.decode() == MmioRead(0x1000 * value, 1)
    memos = (decoder._io_memo, decoder._mmio_memo, *(v[3] for v in decoder._io_memo.values() if type(v) is tuple))
    assert all(len(m) <= 16 for m in memos)
