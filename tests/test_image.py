"""Image reading and placement checks (no KVM needed)."""

from __future__ import annotations

import os

import pytest

from minivmm.vmm.boot import Mode
from minivmm.vmm.image import ImageError, check_placement, read_image
from minivmm.vmm.layout import SYSTEM_AREA_SIZE, MiB


def test_missing(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        read_image(str(tmp_path / "nope.bin"))


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="is a directory"):
        read_image(str(tmp_path))


def test_empty(tmp_path):
    p = tmp_path / "empty.bin"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="is empty"):
        read_image(str(p))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable(tmp_path):
    p = tmp_path / "secret.bin"
    p.write_bytes(b"\xf4")
    p.chmod(0)
    with pytest.raises(ImageError, match="cannot be read"):
        read_image(str(p))


def test_not_regular():
    with pytest.raises(ImageError, match="not a regular file"):
        read_image("/dev/null")


def test_reads_bytes(tmp_path):
    p = tmp_path / "g.bin"
    p.write_bytes(b"\xf4\xeb\xfd")
    assert read_image(str(p)) == b"\xf4\xeb\xfd"


def test_placement():
    check_placement(100, 0x1000, 16 * MiB, Mode.REAL)
    check_placement(100, 0x100000, 16 * MiB, Mode.LONG)
    with pytest.raises(ImageError, match="does not fit"):
        check_placement(16 * MiB, 0x1000, 16 * MiB, Mode.LONG)
    with pytest.raises(ImageError, match="system area"):
        check_placement(1, 16 * MiB - SYSTEM_AREA_SIZE, 16 * MiB, Mode.LONG)
    with pytest.raises(ImageError, match="real mode"):
        check_placement(1, 0x10000, 16 * MiB, Mode.REAL)
    with pytest.raises(ImageError, match="multiple of 4 KiB"):
        check_placement(1, 0x1000, 16 * MiB + 1, Mode.REAL)
    with pytest.raises(ImageError, match="outside"):
        check_placement(1, 0x1000, 4 << 30, Mode.REAL)
