"""``python -m minivmm``: the same as the ``minivmm`` command."""

from minivmm.cli.app import console_main

console_main()
