"""The ``minivmm`` command: one module per subcommand, wired together in :mod:`minivmm.cli.app`."""

from minivmm.cli.app import app, main

__all__ = ["app", "main"]
