#!/usr/bin/env python3
"""Rebuild the guest images in guest/ from their sources with as, ld and objcopy.

    python3 scripts/build_guests.py            # rebuild guest/*.bin in place
    python3 scripts/build_guests.py --out DIR  # build into DIR (the tests use this to compare)

Each guest/NAME.S becomes guest/NAME.bin: a flat binary linked at the load address 0x1000.
The build is deterministic (no timestamps reach a flat binary), so the committed images must match.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile

GUEST_DIR = pathlib.Path(__file__).resolve().parent.parent / "guest"
LOAD_ADDR = 0x1000


def build(source: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
    """Assemble, link at LOAD_ADDR and flatten one guest; return the path of the .bin."""
    out = out_dir / (source.stem + ".bin")
    with tempfile.TemporaryDirectory() as tmp:
        obj = pathlib.Path(tmp) / "guest.o"
        elf = pathlib.Path(tmp) / "guest.elf"
        subprocess.run(["as", "--64", "-o", str(obj), str(source)], check=True)
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
    for source in sorted(GUEST_DIR.glob("*.S")):
        out = build(source, args.out)
        print(f"{source.name} -> {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
