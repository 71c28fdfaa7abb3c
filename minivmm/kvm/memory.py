"""Guest RAM: anonymous host mappings that back KVM memslots.

The mapping is made with mmap(2) through cffi rather than Python's ``mmap`` module because KVM needs
the host virtual address (``userspace_addr``) and a Python mmap cannot be closed while a pointer into
it is exported; here ``close()`` always unmaps.
"""

from __future__ import annotations

from minivmm.kvm.uapi import MAP_FAILED, ffi, lib

PAGE_SIZE = 4096


class GuestMemory:
    """One contiguous guest-physical range backed by an anonymous, private host mapping."""

    def __init__(self, guest_phys_addr: int, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE or guest_phys_addr % PAGE_SIZE:
            raise ValueError("guest memory must be a positive, page-aligned size at a page-aligned address")
        ptr = lib.mmap(ffi.NULL, size, lib.PROT_READ | lib.PROT_WRITE,
                       lib.MAP_PRIVATE | lib.MAP_ANONYMOUS | lib.MAP_NORESERVE, -1, 0)
        if ptr == MAP_FAILED:
            raise OSError(ffi.errno, f"mmap of {size} bytes of guest memory failed")
        self.guest_phys_addr = guest_phys_addr
        self.size = size
        self._ptr = ptr
        self._buf = ffi.buffer(ptr, size)

    @property
    def host_addr(self) -> int:
        """The host virtual address of the mapping, as KVM_SET_USER_MEMORY_REGION wants it."""
        return int(ffi.cast("uintptr_t", self._ptr))

    def contains(self, gpa: int, length: int = 1) -> bool:
        """Whether ``[gpa, gpa + length)`` lies inside this range."""
        return self.guest_phys_addr <= gpa and gpa + length <= self.guest_phys_addr + self.size

    def write(self, gpa: int, data: bytes) -> None:
        """Copy ``data`` into guest memory at guest-physical address ``gpa``."""
        if not self.contains(gpa, len(data)):
            raise ValueError(f"write of {len(data)} bytes at {gpa:#x} is outside guest memory")
        off = gpa - self.guest_phys_addr
        self._buf[off:off + len(data)] = data

    def read(self, gpa: int, length: int) -> bytes:
        """Return ``length`` bytes of guest memory from guest-physical address ``gpa``."""
        if not self.contains(gpa, length):
            raise ValueError(f"read of {length} bytes at {gpa:#x} is outside guest memory")
        off = gpa - self.guest_phys_addr
        return bytes(self._buf[off:off + length])

    def close(self) -> None:
        """Unmap the memory. KVM must no longer have it in a memslot (close the VM first)."""
        if self._ptr is not None:
            self._buf = None
            lib.munmap(self._ptr, self.size)
            self._ptr = None

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
