"""The guest-physical layout minivmm gives every guest: RAM from 0, the VMM's tables at the top of RAM,
and an MMIO window above RAM where the MMIO devices live.

    0 ............................ RAM (memslot 0) ....................... mem_size
                                       [ system area: GDT, page tables ]  (top 64 KiB)
    0xd0000000  scratch device (4 KiB)
    0xd0001000  doorbell (ioeventfd on the first 4 bytes)
    0xd0002000  control device (runtime registration of doorbells)
    0xd0010000  dynamic doorbells registered at run time (4 KiB each)

Ports: 0x3f8-0x3ff serial (COM1), 0xe9 debug console.
"""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

DEFAULT_MEM_SIZE = 16 * MiB
#: The smallest RAM: the system area plus room for a page of stack and an image.
MIN_MEM_SIZE = 1 * MiB
#: RAM must stay below the MMIO window (it is one memslot starting at 0).
MAX_MEM_SIZE = 3 * GiB
DEFAULT_LOAD_ADDR = 0x1000

SYSTEM_AREA_SIZE = 64 * KiB

SCRATCH_BASE = 0xD000_0000
DOORBELL_BASE = 0xD000_1000
CONTROL_BASE = 0xD000_2000
DYNAMIC_DOORBELL_BASE = 0xD001_0000
DYNAMIC_DOORBELL_STRIDE = 0x1000

#: Long mode identity-maps this much with 2 MiB pages: all of RAM and the MMIO window.
IDENTITY_MAP_SIZE = 4 * GiB

RAM_SLOT = 0


def system_area_base(mem_size: int) -> int:
    """Where the VMM's own tables (GDT, page tables) start: the top ``SYSTEM_AREA_SIZE`` of RAM."""
    return mem_size - SYSTEM_AREA_SIZE
