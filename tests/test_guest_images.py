"""The committed guest images are exactly what their sources build to."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import GUEST, ROOT


@pytest.mark.skipif(any(shutil.which(t) is None for t in ("as", "ld", "objcopy")), reason="needs binutils")
def test_committed_images_match_sources(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_guests.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    sources = sorted(GUEST.glob("*.S"))
    assert sources
    for source in sources:
        built = (tmp_path / (source.stem + ".bin")).read_bytes()
        committed = (GUEST / (source.stem + ".bin")).read_bytes()
        assert built == committed, f"{source.name}: rebuild guest images with scripts/build_guests.py"


def test_committed_layout_include_is_the_generated_one():
    from minivmm.vmm.guest_layout import assembler_include
    assert (GUEST / "layout.inc").read_text() == assembler_include(), \
        "guest/layout.inc is stale: rebuild guest images with scripts/build_guests.py"
