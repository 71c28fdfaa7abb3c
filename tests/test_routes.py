"""The per-vCPU route table (access -> the claiming device's bound handler): the bus's own answers,
filled per published bus version and started afresh when the bus changes, bounded."""

from __future__ import annotations

import random

from minivmm.devices.bus import Bus
from minivmm.kvm.exits import IoIn, IoOut, MmioRead, MmioWrite
from minivmm.vmm import dispatch
from minivmm.vmm.dispatch import DispatchStats, ExitDispatcher, RouteTable, Verdict


class Dev:
    """Records what reached it; a read answers its name's first byte and the offset."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.writes: list[tuple[int, bytes]] = []

    def read(self, offset: int, size: int) -> bytes:
        return bytes([ord(self.name[0]), offset & 0xFF]) + bytes(size - 2) if size >= 2 else bytes([offset & 0xFF])

    def write(self, offset: int, data: bytes) -> None:
        self.writes.append((offset, data))


class Completer:
    def __init__(self) -> None:
        self.answers: list[bytes] = []

    def complete_io_in(self, data: bytes) -> None:
        self.answers.append(data)

    def complete_mmio_read(self, data: bytes) -> None:
        self.answers.append(data)


def routed(routes: RouteTable, addr: int, size: int) -> tuple[object, object]:
    """What the table answers for a write and a read (renewing first if the bus changed, as the
    dispatcher's handlers do)."""
    if routes.table is not routes.bus.table:
        routes.renew()
    return routes.writes[size][addr], routes.reads[size][addr]


def test_a_route_is_the_devices_bound_handler_and_follows_each_bus_change():
    bus = Bus("mmio", 1 << 64)
    a = Dev("a")
    bus.insert(a, 0x1000, 0x10)
    routes = RouteTable(bus)
    write, read = routed(routes, 0x1004, 4)
    write(b"wxyz")
    assert a.writes == [(4, b"wxyz")] and read() == a.read(4, 4)
    assert routed(routes, 0x100E, 4) == (None, None)  # runs past the range: unclaimed, as the bus says
    assert routed(routes, 0x2000, 4) == (None, None)
    assert 0x2000 in routes.writes[4]  # filled: the answer "unclaimed" is remembered too
    b = Dev("b")
    bus.insert(b, 0x2000, 0x10)  # a new published table: the remembered "unclaimed" must not survive
    write, _ = routed(routes, 0x2000, 4)
    assert write is not None and routes.table is bus.table and 0x1004 not in routes.writes[4]
    write(b"1234")
    assert b.writes == [(0, b"1234")]
    bus.remove(0x1000)
    assert routed(routes, 0x1004, 4) == (None, None)


def test_the_table_answers_as_the_bus_lookup_on_random_buses_and_accesses():
    rng = random.Random(14)
    for _ in range(20):
        bus = Bus("mmio", 1 << 16)
        devices: dict[int, Dev] = {}
        base = 0
        while base < 0x800:
            base += rng.randrange(0, 0x40)
            length = rng.randrange(1, 0x40)
            dev = Dev(f"d{base}")
            bus.insert(dev, base, length)
            devices[base] = dev
            base += length
        routes = RouteTable(bus)
        for _ in range(300):
            if rng.random() < 0.05 and devices:  # the bus changes under the table now and then
                bus.remove(rng.choice(list(devices)))
                devices = {r.base: r.device for r in bus.ranges()}  # type: ignore[misc]
            addr, size = rng.randrange(0, 0x900), rng.choice((1, 2, 4, 8))
            hit = bus.resolve(addr, size)
            write, read = routed(routes, addr, size)
            assert (write is None) == (hit is None) == (read is None)
            if hit is not None:
                dev, offset = hit
                assert write.func.__self__ is dev and write.args == (offset,)  # type: ignore[union-attr]
                assert read() == dev.read(offset, size)  # type: ignore[misc]


def test_the_dispatcher_goes_through_the_table_and_sees_a_device_added_mid_run():
    pio, mmio = Bus("pio", 1 << 16), Bus("mmio", 1 << 64)
    d, stats, vcpu = ExitDispatcher(pio, mmio), DispatchStats(), Completer()
    assert d.handle(IoOut(0x3FF, 1, 1, b"a"), vcpu, stats) is Verdict.CONTINUE
    assert d.handle(MmioWrite(0x5000, b"ab"), vcpu, stats) is Verdict.CONTINUE
    assert stats.unclaimed == 2
    late_pio, late_mmio = Dev("p"), Dev("m")
    pio.insert(late_pio, 0x3F8, 8)
    mmio.insert(late_mmio, 0x5000, 0x100)
    d.handle(IoOut(0x3FF, 1, 1, b"b"), vcpu, stats)
    d.handle(MmioWrite(0x5000, b"cd"), vcpu, stats)
    d.handle(IoIn(0x3FA, 2, 2), vcpu, stats)
    d.handle(MmioRead(0x5010, 4), vcpu, stats)
    assert late_pio.writes == [(7, b"b")] and late_mmio.writes == [(0, b"cd")] and stats.unclaimed == 2
    assert vcpu.answers == [late_pio.read(2, 2) * 2, late_mmio.read(0x10, 4)]
    pio.remove(0x3F8)
    assert d.handle(IoIn(0x3FA, 1, 1), vcpu, stats) is Verdict.CONTINUE and vcpu.answers[-1] == b"\0"
    assert stats.unclaimed == 3


def test_unclaimed_accesses_past_the_kept_few_are_still_counted_and_strict_still_fails():
    d, stats, vcpu = ExitDispatcher(Bus("pio", 1 << 16), Bus("mmio", 1 << 64)), DispatchStats(), Completer()
    for i in range(50):
        assert d.handle(IoOut(0x3FF, 1, 1, b"x"), vcpu, stats) is Verdict.CONTINUE
        assert d.handle(MmioWrite(0x9000 + i, b"x"), vcpu, stats) is Verdict.CONTINUE
    assert stats.unclaimed == 100 and len(stats.first_unclaimed) == dispatch.FIRST_UNCLAIMED_KEPT
    d.strict = True
    assert d.handle(IoOut(0x3FF, 1, 1, b"x"), vcpu, stats) is Verdict.FAILED
    assert d.handle(MmioWrite(0x9000, b"x"), vcpu, stats) is Verdict.FAILED and stats.unclaimed == 102


def test_a_guest_walking_new_addresses_cannot_grow_it_without_bound(monkeypatch):
    monkeypatch.setattr(dispatch, "ROUTE_LIMIT", 64)
    routes = RouteTable(Bus("mmio", 1 << 64))
    for addr in range(0x20000000, 0x20000000 + 8 * 1000, 8):
        assert routed(routes, addr, 4) == (None, None)
    assert len(routes.writes[4]) <= 64 and len(routes.reads[4]) <= 64
