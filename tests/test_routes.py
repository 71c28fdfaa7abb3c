"""The per-vCPU route table: the bus's own answers, remembered per published bus version, bounded."""

from __future__ import annotations

from minivmm.devices.bus import Bus
from minivmm.vmm import dispatch
from minivmm.vmm.dispatch import RouteTable


class Dev:
    def __init__(self, name: str) -> None:
        self.name = name

    def read(self, offset: int, size: int) -> bytes:
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        pass


def test_a_route_is_the_bus_answer_and_follows_each_bus_change():
    bus = Bus("mmio", 1 << 64)
    a = Dev("a")
    bus.insert(a, 0x1000, 0x10)
    routes = RouteTable(bus)
    read, write, offset = routes.lookup(0x1004, 4)
    assert write == a.write and read == a.read and offset == 4
    assert routes.lookup(0x100E, 4) is None  # runs past the range: unclaimed, as the bus says
    assert routes.lookup(0x2000, 4) is None
    b = Dev("b")
    bus.insert(b, 0x2000, 0x10)  # a new published table: the remembered "unclaimed" must not survive
    assert routes.lookup(0x2000, 4)[1] == b.write
    bus.remove(0x1000)
    assert routes.lookup(0x1004, 4) is None
    for addr, size in ((0x2000, 1), (0x2004, 4), (0x200F, 1), (0x200F, 2), (0x1FFF, 1)):
        hit = bus.resolve(addr, size)
        route = routes.lookup(addr, size)
        assert (route is None) == (hit is None) and (route is None or route[2] == hit[1])


def test_a_guest_walking_new_addresses_cannot_grow_it_without_bound(monkeypatch):
    monkeypatch.setattr(dispatch, "ROUTE_LIMIT", 64)
    routes = RouteTable(Bus("mmio", 1 << 64))
    for addr in range(0x20000000, 0x20000000 + 8 * 1000, 8):
        assert routes.lookup(addr, 4) is None
    assert len(routes._routes) <= 64
