"""The ``minivmm`` command line and its entry point, the one place where errors become exit codes.

Built on argparse (standard library) for start-up time and for full control of errors. Every failure,
a usage error included, ends as one line ``minivmm: error: ...`` on stderr in our own wording and a
documented exit code (:class:`minivmm.cli.errors.ExitCode`), never a traceback.

A command is a module ``minivmm/cli/<name>_cmd.py`` with ``register(subparsers)`` (argparse only:
importing it must stay cheap) and ``run(args) -> int`` (heavy imports inside). To add one, append its
module name to :data:`COMMANDS`. The module of command ``NAME`` is ``NAME_cmd``: a run of one command
imports and registers that command's module only (the others cost start-up and are not needed); the
whole parser is built for ``--help``, no command or an unknown one.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time); mypy knows the name
if TYPE_CHECKING:  # argparse is imported inside main, under its Ctrl-C handler
    import argparse

#: The command modules, in the order ``minivmm --help`` lists them. Extend here.
COMMANDS = ("boot_cmd", "timing_cmd", "trace_cmd", "model_cmd", "compare_cmd", "repro_cmd", "info_cmd")

DESCRIPTION = "A pure-Python mini-VMM on /dev/kvm, with an executable model of KVM's io_bus and Tree SRCU."

EPILOG_TAIL = "Run 'minivmm COMMAND --help' for a command's options."


def epilog() -> str:
    """The top-level help's epilog: the exit-code table (from ``ExitCode``, the one table) and a pointer."""
    from minivmm.cli.errors import exit_code_table
    return f"Exit codes (every command):\n{exit_code_table()}\n\n{EPILOG_TAIL}"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (``console_main`` exits with it)."""
    try:
        # Imports happen here, under the handler, so that a Ctrl-C during start-up ends quietly too.
        import argparse

        from minivmm.cli.errors import CliError, ExitCode
    except KeyboardInterrupt:
        return 130
    try:
        guard_stdout()
        words = sys.argv[1:] if argv is None else argv
        _refuse_unknown_top_level_option(words)
        parser = build_parser(_command_in(words))
        args = parser.parse_args(argv)
        handler = getattr(args, "handler", None)
        if handler is None:
            commands = ", ".join(_command_names(parser))
            raise CliError(f"no command given. Usage: minivmm COMMAND [OPTIONS] (commands: {commands}; "
                           "see minivmm --help)")
        rv = handler(args)
        code = int(rv) if isinstance(rv, int) else int(ExitCode.OK)
    except SystemExit as e:  # --help and --version: argparse prints, then exits 0
        code = e.code if isinstance(e.code, int) else 0
    except CliError as e:
        _print_error(str(e))
        return int(e.code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        _silence_stdout()
        return int(ExitCode.OK)  # the reader went away (e.g. `| head`): not our failure
    except argparse.ArgumentError as e:  # an argparse error the parser did not route through error()
        _print_error(str(e))
        return int(ExitCode.BAD_INPUT)
    except Exception as e:  # the last resort: what a file, the output or the process's limits refused
        return _report_failure(e)
    return _flush_stdout(code)


def _flush_stdout(code: int) -> int:
    """Flush what the command left buffered for stdout: a write error still pending there is the
    command's failure too (exit 6); a reader that left keeps the command's own code."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except Exception as e:
        return _report_failure(e)
    return code


def _report_failure(e: Exception) -> int:
    """An exception no command turned into a CliError: a file refused, an output that failed, or a
    resource that ran out becomes its one line and exit code; anything else is a bug and is raised."""
    from minivmm.cli.errors import ExitCode, resource_error
    from minivmm.files import FileRefused, WriteFailed
    if isinstance(e, FileRefused):
        _print_error(str(e))
        return int(ExitCode.BAD_INPUT)
    if isinstance(e, WriteFailed):
        _silence_stdout()  # what is still buffered for stdout must not fail again at exit
        _print_error(str(e))
        return int(ExitCode.WRITE_FAILED)
    exhausted = resource_error(e)
    if exhausted is None:
        raise e
    _print_error(str(exhausted))
    return int(exhausted.code)


def guard_stdout() -> None:
    """Make a failed write to standard output, other than EPIPE, a :class:`~minivmm.files.WriteFailed`
    (one line, exit 6) whichever command wrote, instead of an OSError anywhere in the command.

    Only the process's own stdout is wrapped (not a stream a test put there); EPIPE (the reader left)
    stays a BrokenPipeError, which ends the command quietly."""
    import io

    from minivmm.files import WriteFailed

    out = sys.__stdout__
    if out is None or sys.stdout is not out:
        return
    try:
        fd = out.fileno()
        out.flush()
    except (OSError, ValueError):
        return

    class StdoutFile(io.FileIO):
        def write(self, data: bytes) -> int | None:  # type: ignore[override]
            try:
                return super().write(data)
            except BrokenPipeError:
                raise
            except OSError as e:
                raise WriteFailed("standard output", "-", e) from None

    raw = StdoutFile(fd, "w", closefd=False)
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw), encoding=out.encoding, errors=out.errors,
                                  line_buffering=out.line_buffering)


#: The options ``minivmm`` itself takes before a command; every other option belongs to a command.
TOP_LEVEL_OPTIONS = ("-h", "--help", "--version")


def _refuse_unknown_top_level_option(argv: list[str]) -> None:
    """An option before the command that ``minivmm`` does not take is the error to report.

    argparse would set it aside and go on into the command, which then reports what it misses
    (``minivmm --bogus boot`` said "boot needs IMAGE"), not the option it was never given."""
    from minivmm.cli.errors import UsageError
    if argv and argv[0].startswith("-") and argv[0] != "-" and argv[0] not in TOP_LEVEL_OPTIONS:
        raise UsageError(f"unknown option {argv[0]}: minivmm takes only {', '.join(TOP_LEVEL_OPTIONS)} "
                         "before the command; a command's options go after it (minivmm COMMAND --help)")


def _command_in(argv: list[str]) -> str | None:
    """The command module ``argv`` names, if its first word is a known command; else None."""
    for word in argv:
        module = f"{word}_cmd"
        return module if module in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser: the top-level options and one subparser per module in :data:`COMMANDS`, or only the
    subparser of module ``only``."""
    import importlib

    from minivmm import __version__
    from minivmm.cli.parser import Parser

    parser = Parser(prog="minivmm", description=DESCRIPTION, epilog=epilog())
    parser.add_argument("--version", action="version", version=f"minivmm {__version__}",
                        help="print the version and exit")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for name in COMMANDS if only is None else (only,):
        importlib.import_module(f"minivmm.cli.{name}").register(subparsers)
    return parser


def _command_names(parser: argparse.ArgumentParser) -> list[str]:
    """The registered command names, in order."""
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def _print_error(message: str) -> None:
    """The one error format: ``minivmm: error: MESSAGE`` on one line of stderr."""
    line = " ".join(message.split())  # one line, whatever the message held
    try:
        sys.stderr.write(f"minivmm: error: {line}\n")
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        pass


def _silence_stdout() -> None:
    """After EPIPE on stdout, point it at /dev/null so the interpreter's final flush cannot fail again."""
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def console_main() -> None:
    """The console-script entry point (and ``python -m minivmm``)."""
    try:
        code = main()
    except KeyboardInterrupt:  # a Ctrl-C that lands between main's handlers
        code = 130
    exit_without_teardown(code)


def exit_without_teardown(code: int) -> None:
    """End the process with ``code`` once the command is done, skipping the interpreter's teardown.

    Tearing down ~200 modules' worth of objects costs ~10 ms of every command (a tenth of a whole
    ``minivmm boot``; scripts/bench_startup.py), and nothing of ours needs it: every file and device is
    closed by the command itself. What the teardown would still do that matters is done here first:
    the atexit functions run (``weakref.finalize``, e.g. a temporary directory's clean-up, is one) and
    stdout and stderr are flushed. If a non-daemon thread is still running, the normal exit is taken
    (it waits for the thread, as Python's shutdown always did).
    """
    import atexit
    import os
    import threading

    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:  # a reader that left (EPIPE), a full disk, a closed stream: nothing to keep
                pass
        os._exit(code)
