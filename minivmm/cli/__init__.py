"""The ``minivmm`` command: one module per subcommand (``*_cmd.py``), wired together in :mod:`minivmm.cli.app`.

Nothing is imported here: ``minivmm.cli.app`` is the console script's first import and must stay cheap.
"""
