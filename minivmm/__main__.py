"""``python -m minivmm``: the same as the ``minivmm`` command."""

import sys

try:
    from minivmm.cli.app import console_main
except KeyboardInterrupt:  # Ctrl-C while the interpreter was still importing: end quietly, as SIGINT
    sys.exit(130)

console_main()
