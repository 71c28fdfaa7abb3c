"""Loading a flat guest image and checking where it goes, before any KVM resource is taken."""

from __future__ import annotations

from minivmm.files import FileRefused, read_bytes
from minivmm.vmm.boot import Mode
from minivmm.vmm.layout import MAX_MEM_SIZE, MIN_MEM_SIZE, system_area_base

#: Real mode runs with CS base 0 and a 16-bit IP: the entry point must be below 64 KiB.
REAL_MODE_LIMIT = 0x10000
PAGE = 4096


class ImageError(ValueError):
    """The image or its placement is unusable; the message says why in one line."""


def read_image(path: str, max_size: int = MAX_MEM_SIZE,
               where: str = f"the largest guest RAM ({MAX_MEM_SIZE} bytes)") -> bytes:
    """Read a flat image through the one file reader (:func:`minivmm.files.read_bytes`: a non-empty
    regular file, opened without blocking, checked on the open file), refusing it with one line.

    A file larger than ``max_size`` (the room the caller has for it, described by ``where``) is refused
    by its size, before a byte is read: a sparse 2 GiB file must not cost 2 GiB of reading first.
    """
    try:
        return read_bytes(path, "image", max_size, too_large=f"it does not fit in {where}")
    except FileRefused as e:
        raise ImageError(str(e)) from None


def check_mem_size(mem_size: int) -> None:
    """Refuse a RAM size that is not page-aligned or outside [MIN_MEM_SIZE, MAX_MEM_SIZE]."""
    if mem_size % PAGE:
        raise ImageError(f"--mem {mem_size} is not a multiple of 4 KiB")
    if not MIN_MEM_SIZE <= mem_size <= MAX_MEM_SIZE:
        raise ImageError(f"--mem {mem_size:#x} is outside [{MIN_MEM_SIZE:#x}, {MAX_MEM_SIZE:#x}]")


def check_placement(image_size: int, load_addr: int, mem_size: int, mode: Mode) -> None:
    """Refuse an image that does not fit in RAM below the VMM's system area, or an unreachable entry."""
    check_mem_size(mem_size)
    top = system_area_base(mem_size)
    if load_addr < 0:
        raise ImageError(f"--load-addr {load_addr:#x} is negative")
    if load_addr >= top:
        raise ImageError(f"--load-addr {load_addr:#x} is not below the VMM's system area at {top:#x} "
                         f"(RAM is {mem_size:#x} bytes)")
    if load_addr + image_size > top:
        raise ImageError(f"image of {image_size} bytes at {load_addr:#x} does not fit in RAM below the "
                         f"VMM's system area at {top:#x} (use a larger --mem)")
    if mode is Mode.REAL and load_addr >= REAL_MODE_LIMIT:
        raise ImageError(f"--load-addr {load_addr:#x} cannot be reached in real mode (CS base 0, "
                         f"16-bit IP: it must be below {REAL_MODE_LIMIT:#x})")
