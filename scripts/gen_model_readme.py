#!/usr/bin/env python3
"""Regenerate the published-figures table of kernel_model/README.md from the model.

Usage: python scripts/gen_model_readme.py [--check]
With --check, write nothing and exit 1 if the README's table differs from the model's (what
tests/test_model_readme_table.py asserts).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.model_table import current_table, published_table, replace_table  # noqa: E402


def main() -> int:
    """Rewrite (or, with --check, compare) the table; 0 when the README is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when stale")
    args = parser.parse_args()
    path = ROOT / "kernel_model" / "README.md"
    text = path.read_text()
    if args.check:
        stale = current_table(text) != published_table()
        print("kernel_model/README.md: table is " + ("stale" if stale else "up to date"))
        return 1 if stale else 0
    path.write_text(replace_table(text))
    print("kernel_model/README.md: table regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
