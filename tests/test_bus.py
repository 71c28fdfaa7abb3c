"""The bus: ranges, offsets, overlap refusal, and lookup against a brute-force oracle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivmm.devices.bus import Bus, NoSuchRange, Overlap, RangeOutOfBounds, ZeroSizedRange


class Dev:
    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[tuple[str, int, object]] = []

    def read(self, offset: int, size: int) -> bytes:
        self.seen.append(("r", offset, size))
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        self.seen.append(("w", offset, data))


def test_devices_see_offsets():
    bus = Bus("pio", 1 << 16)
    d = Dev("uart")
    bus.insert(d, 0x3F8, 8)
    assert bus.resolve(0x3F8) == (d, 0)
    assert bus.resolve(0x3FD) == (d, 5)
    assert bus.resolve(0x3FF, 1) == (d, 7)
    assert bus.resolve(0x3F7) is None
    assert bus.resolve(0x400) is None


def test_access_straddling_the_end_is_unclaimed():
    bus = Bus("mmio", 1 << 64)
    bus.insert(Dev("a"), 0x1000, 4)
    assert bus.resolve(0x1002, 2) is not None
    assert bus.resolve(0x1002, 4) is None


@pytest.mark.parametrize("base,length", [(0x10, 0x10), (0x18, 4), (0x8, 0x10), (0x0, 0x100), (0x1F, 1)])
def test_overlaps_are_refused(base, length):
    bus = Bus("pio", 1 << 16)
    bus.insert(Dev("a"), 0x10, 0x10)
    with pytest.raises(Overlap):
        bus.insert(Dev("b"), base, length)
    assert len(bus) == 1


def test_adjacent_ranges_are_fine():
    bus = Bus("pio", 1 << 16)
    bus.insert(Dev("a"), 0x10, 0x10)
    bus.insert(Dev("b"), 0x20, 0x10)
    bus.insert(Dev("c"), 0x0, 0x10)
    assert [r.device.name for r in bus.ranges()] == ["c", "a", "b"]


def test_zero_sized_and_out_of_bounds():
    bus = Bus("pio", 1 << 16)
    with pytest.raises(ZeroSizedRange):
        bus.insert(Dev("z"), 0x10, 0)
    with pytest.raises(RangeOutOfBounds):
        bus.insert(Dev("big"), 0xFFFF, 2)
    with pytest.raises(RangeOutOfBounds):
        bus.insert(Dev("neg"), -1, 2)


def test_remove():
    bus = Bus("mmio", 1 << 64)
    a = Dev("a")
    bus.insert(a, 0x1000, 0x10)
    with pytest.raises(NoSuchRange):
        bus.remove(0x1001)
    assert bus.remove(0x1000) is a
    assert bus.resolve(0x1000) is None
    bus.insert(Dev("again"), 0x1000, 0x10)  # the range is free again


ranges = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 40)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(ranges, st.lists(st.tuples(st.integers(0, 260), st.sampled_from([1, 2, 4, 8])), max_size=30))
def test_lookup_agrees_with_brute_force(requested, accesses):
    bus = Bus("pio", 256)
    accepted: list[tuple[int, int, Dev]] = []
    for i, (base, length) in enumerate(requested):
        dev = Dev(f"d{i}")
        clash = length == 0 or base + length > 256 or any(
            b < base + length and base < b + n for b, n, _ in accepted)
        if clash:
            with pytest.raises((Overlap, ZeroSizedRange, RangeOutOfBounds)):
                bus.insert(dev, base, length)
        else:
            bus.insert(dev, base, length)
            accepted.append((base, length, dev))
    for addr, size in accesses:
        expected = next(((d, addr - b) for b, n, d in accepted if b <= addr and addr + size <= b + n), None)
        assert bus.resolve(addr, size) == expected
