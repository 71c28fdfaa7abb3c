#!/usr/bin/env python3
"""Rebuild the guest images in guest/ from their sources with as, ld and objcopy.

    python3 scripts/build_guests.py            # rebuild guest/*.bin in place
    python3 scripts/build_guests.py --out DIR  # build into DIR (the tests use this to compare)

Each guest/NAME.S becomes guest/NAME.bin: a flat binary linked at minivmm's default load address.
The guests include guest/layout.inc (addresses and ports), which this script writes first from
minivmm.vmm.guest_layout. The build is deterministic (no timestamps reach a flat binary), so the
committed images and include file must match.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile

from minivmm.vmm.guest_layout import assembler_include
from minivmm.vmm.layout import DEFAULT_LOAD_ADDR as LOAD_ADDR

GUEST_DIR = pathlib.Path(__file__).resolve().parent.parent / "guest"


def build(source: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
    """Assemble (with the layout.inc generated now, not the committed one), link at LOAD_ADDR and
    flatten one guest; return the path of the .bin."""
    out = out_dir / (source.stem + ".bin")
    with tempfile.TemporaryDirectory() as tmp:
        obj = pathlib.Path(tmp) / "guest.o"
        elf = pathlib.Path(tmp) / "guest.elf"
        (pathlib.Path(tmp) / "layout.inc").write_text(assembler_include())
        subprocess.run(["as", "--64", "-I", tmp, "-o", str(obj), str(source)], check=True)
        subprocess.run(["ld", "-m", "elf_x86_64", "-nostdlib", "-N", "--no-warn-rwx-segments",
                        "-Ttext", hex(LOAD_ADDR), "-e", "_start", "-o", str(elf), str(obj)], check=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(elf), str(out)], check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=GUEST_DIR, help="where to put the .bin files")
    args = parser.parse_args(argv)
    for tool in ("as", "ld", "objcopy"):
        if shutil.which(tool) is None:
            print(f"build_guests: {tool} not found (install binutils)", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.out.resolve() == GUEST_DIR:
        (GUEST_DIR / "layout.inc").write_text(assembler_include())
        print("layout.inc written from minivmm.vmm.guest_layout")
    for source in sorted(GUEST_DIR.glob("*.S")):
        out = build(source, args.out)
        print(f"{source.name} -> {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
