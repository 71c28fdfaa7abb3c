"""The ``minivmm`` command line and its entry point, the one place where errors become exit codes.

Built on typer (pinned below 0.29 in pyproject.toml: 0.29 validates parameters with pydantic, ~0.13 s of
every run). typer runs in click's non-standalone mode: click's own error printing, usage dumps and
exits never happen; every failure, a usage error included, ends here as one line ``minivmm: error: ...``
on stderr in our own wording and a documented exit code (:class:`minivmm.cli.errors.ExitCode`).

A command is a module ``minivmm/cli/<name>_cmd.py`` whose ``COMMAND`` (a :class:`Command`) names a
typer command function, whose parameters are the shared options of :mod:`minivmm.cli.options` and its
own, and its help; the implementation is imported inside the command function, when it runs. To add
one, append its name to :data:`COMMANDS`. A run of one command builds that command only (the others
cost start-up and are not needed); the whole app is built for ``--help``, no command, an unknown one
and shell completion.
"""

from __future__ import annotations

import sys
from typing import NamedTuple  # typer imports typing in every run anyway

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time); mypy knows the name
if TYPE_CHECKING:
    from collections.abc import Callable

    import typer

#: The commands, in the order ``minivmm --help`` lists them; ``NAME`` lives in ``minivmm/cli/NAME_cmd.py``.
COMMANDS = ("boot", "timing", "trace", "model", "compare", "repro", "info")

DESCRIPTION = "A pure-Python mini-VMM on /dev/kvm, with an executable model of KVM's io_bus and Tree SRCU."

#: The options ``minivmm`` itself takes before a command; every other option belongs to a command.
TOP_LEVEL_OPTIONS = ("-h", "--help", "--version", "--install-completion", "--show-completion")

#: The environment variable through which a shell asks for completions (click's rule: _PROG_COMPLETE).
COMPLETE_VAR = "_MINIVMM_COMPLETE"


class Command(NamedTuple):
    """A command as its module declares it (``COMMAND``): its name, the typer function (whose parameters
    are its options), its help, the one line ``minivmm --help`` shows, and an epilog. ``interspersed``
    False ends option parsing at the first argument (``trace [OPTIONS] [--] PROGRAM ARGS``: the program's
    options are its own)."""

    name: str
    function: Callable[..., int]
    help: str
    short_help: str
    epilog: str | None = None
    interspersed: bool = True


def epilog() -> str:
    """The top-level help's epilog: the exit-code table (from ``ExitCode``, the one table) and a pointer.
    ``\\b`` keeps click from re-wrapping the table."""
    from minivmm.cli.errors import exit_code_table
    return (f"\b\nExit codes (every command):\n{exit_code_table(EPILOG_WIDTH)}\n\n"
            "Run 'minivmm COMMAND --help' for a command's options.")


#: click indents an epilog by two columns: the table is wrapped to fit 80 columns with them.
EPILOG_WIDTH = 76


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (``console_main`` exits with it)."""
    try:
        # Imports happen here, under the handler, so that a Ctrl-C during start-up ends quietly too.
        import typer

        from minivmm.cli.errors import CliError, ExitCode
    except KeyboardInterrupt:
        return 130
    except ImportError as e:  # a broken installation: one line (any other ImportError is raised there)
        return _report_failure(e)
    words = sys.argv[1:] if argv is None else list(argv)
    try:
        guard_stdout()
        only = None if _completing() else _command_in(words)
        command = typer.main.get_command(build_app(only))
        rv = command.main(args=words, prog_name="minivmm", complete_var=COMPLETE_VAR, standalone_mode=False)
        code = int(rv) if isinstance(rv, int) else int(ExitCode.OK)
    except SystemExit as e:  # shell completion ends this way
        code = e.code if isinstance(e.code, int) else 0
    except CliError as e:
        _print_error(str(e))
        return int(e.code)
    except typer.TyperException as e:  # click's usage errors (typer vendors click)
        _print_error(usage_error_message(e))
        return int(ExitCode.BAD_INPUT)
    except typer.Abort:
        return int(ExitCode.INTERRUPTED)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except ReaderLeft:
        silence_stdout()
        return int(ExitCode.OK)  # the reader went away (e.g. `| head`): not our failure
    except Exception as e:  # the last resort: what a file, the output or the process's limits refused
        return _report_failure(e)
    return _flush_stdout(code)


class ReaderLeft(Exception):
    """EPIPE on stdout, carried past click (which would turn a BrokenPipeError into exit 1)."""


def run_command(implementation: typer.models.CommandFunctionType, *args: object, **kwargs: object) -> int:
    """Call a command's implementation (every command function ends here): EPIPE becomes
    :class:`ReaderLeft`, and with ``output`` (``-o FILE``) what the command prints to stdout is written
    to that file, whole, at the end (checked before the work: :class:`minivmm.files.Output`)."""
    output = kwargs.pop("output", None)
    try:
        if output is None:
            return int(implementation(*args, **kwargs))
        import contextlib
        import io

        from minivmm.files import Output
        target = Output(str(output), "--output")
        report = io.StringIO()
        with contextlib.redirect_stdout(report):
            code = int(implementation(*args, **kwargs))
        target.write(report.getvalue())
        return code
    except BrokenPipeError:
        raise ReaderLeft from None


def _completing() -> bool:
    import os
    return COMPLETE_VAR in os.environ


def _command_in(argv: list[str]) -> str | None:
    """The command ``argv`` names, if its first word is a known command; else None (build them all)."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def build_app(only: str | None = None) -> typer.Typer:
    """The typer app: the top-level options and every command in :data:`COMMANDS`, or only ``only``."""
    import importlib

    import typer

    app = typer.Typer(name="minivmm", help=DESCRIPTION, epilog=epilog(), rich_markup_mode=None,
                      pretty_exceptions_enable=False, add_completion=True,
                      context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})

    @app.callback()
    def top_level(version: bool = typer.Option(False, "--version", help="print the version and exit",
                                               is_eager=True, callback=_print_version)) -> None:
        """A pure-Python mini-VMM on /dev/kvm, with an executable model of KVM's io_bus and Tree SRCU."""

    for name in COMMANDS if only is None else (only,):
        command: Command = importlib.import_module(f"minivmm.cli.{name}_cmd").COMMAND
        settings = None if command.interspersed else {"allow_interspersed_args": False}
        app.command(command.name, help=command.help, short_help=command.short_help, epilog=command.epilog,
                    context_settings=settings)(command.function)
    return app


def _print_version(value: bool) -> None:
    if value:
        import typer

        from minivmm import __version__
        sys.stdout.write(f"minivmm {__version__}\n")
        raise typer.Exit(0)


def usage_error_message(e: Exception) -> str:
    """A click usage error in minivmm's words: one line, the option's long name first, never click's
    "Usage:" dump or its "Try --help" line."""
    from typer._click import exceptions as ce

    ctx = getattr(e, "ctx", None)
    command = ctx.command_path if ctx is not None else "minivmm"
    at_top = ctx is not None and ctx.parent is None
    if isinstance(e, ce.NoSuchOption):
        if at_top:
            return (f"unknown option {e.option_name}: minivmm takes only {', '.join(TOP_LEVEL_OPTIONS)} before "
                    "the command; a command's options go after it (minivmm COMMAND --help)")
        hint = f"; did you mean {', '.join(sorted(e.possibilities))}?" if e.possibilities else ""
        return f"unknown option {e.option_name} (see {command} --help{hint})"
    if isinstance(e, ce.BadOptionUsage):
        if "requires" in e.message:
            return f"{e.option_name} needs a value"
        if "does not take a value" in e.message:
            return f"{e.option_name} takes no value"
        return f"{e.option_name}: {e.message}"
    if isinstance(e, ce.MissingParameter) and e.param is not None:
        what = e.param.human_readable_name
        example = _example(ctx.info_name) if ctx is not None else None
        return f"{command} needs {what} ({f'e.g. {example}' if example else f'see {command} --help'})"
    if isinstance(e, ce.BadParameter):
        return f"{_param_name(e.param) or e.param_hint or 'a value'}: {e.message}"
    message = e.message if isinstance(e, ce.ClickException) else str(e)
    if message.startswith("No such command "):
        return f"unknown command {message[len('No such command '):].rstrip('.')} (see minivmm --help)"
    if message == "Missing command.":
        return (f"no command given. Usage: minivmm COMMAND [OPTIONS] (commands: {', '.join(COMMANDS)}; see "
                "minivmm --help)")
    if message.startswith("Got unexpected extra argument"):  # "... argument(s) (a b)"
        extra = message.rsplit(" (", 1)[-1].rstrip(")")
        return f"unknown option or extra argument: {extra} (see {command} --help)"
    return message


def _example(command: str | None) -> str | None:
    """A command line of ``command`` that works (its module's ``EXAMPLE``), for a missing argument."""
    if command not in COMMANDS:
        return None
    import importlib
    example = getattr(importlib.import_module(f"minivmm.cli.{command}_cmd"), "EXAMPLE", None)
    return None if example is None else str(example)


def _param_name(param: object) -> str | None:
    """``-m/--mem`` -> ``--mem``: an option is named the way its help shows it first; an argument by its
    metavar."""
    opts: list[str] = list(getattr(param, "opts", None) or ())
    if not opts:
        return None
    if getattr(param, "param_type_name", "") == "argument":
        return str(getattr(param, "human_readable_name", opts[0]))
    return next((o for o in opts if o.startswith("--")), opts[0])


def _report_failure(e: Exception) -> int:
    """An exception no command turned into a CliError: a file refused, an output that failed, or a
    resource that ran out becomes its one line and exit code; anything else is a bug and is raised."""
    from minivmm.cli.errors import ExitCode, missing_module_error, resource_error
    from minivmm.files import FileRefused, WriteFailed
    if _interrupted(e):
        return int(ExitCode.INTERRUPTED)
    if isinstance(e, ImportError):
        missing = missing_module_error(e)
        if missing is not None:  # a dependency imported only by the command that needs it
            _print_error(str(missing))
            return int(missing.code)
    if isinstance(e, FileRefused):
        _print_error(str(e))
        return int(ExitCode.BAD_INPUT)
    if isinstance(e, WriteFailed):
        silence_stdout()  # what is still buffered for stdout must not fail again at exit
        _print_error(str(e))
        return int(ExitCode.WRITE_FAILED)
    exhausted = resource_error(e)
    if exhausted is None:
        raise e
    _print_error(str(exhausted))
    return int(exhausted.code)


def _interrupted(e: BaseException) -> bool:
    """Whether ``e`` is a Ctrl-C in another exception's clothes: Python wraps what a class's
    ``__set_name__`` raises (a KeyboardInterrupt during the import of a dataclass) in a RuntimeError."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _flush_stdout(code: int) -> int:
    """Flush what the command left buffered for stdout: a write error still pending there is the
    command's failure too (exit 6); a reader that left keeps the command's own code."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (BrokenPipeError, ReaderLeft):
        silence_stdout()
    except Exception as e:
        return _report_failure(e)
    return code


def guard_stdout() -> None:
    """Make a failed write to standard output, other than EPIPE, a :class:`~minivmm.files.WriteFailed`
    (one line, exit 6) whichever command wrote, instead of an OSError anywhere in the command.

    Only the process's own stdout is wrapped (not a stream a test put there); EPIPE (the reader left)
    becomes :class:`ReaderLeft`, which ends the command quietly with exit 0 (click turns a
    BrokenPipeError it sees into exit 1)."""
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
            except BrokenPipeError:  # not an OSError past here: click would make it exit 1
                raise ReaderLeft from None
            except OSError as e:
                raise WriteFailed("standard output", "-", e) from None

    raw = StdoutFile(fd, "w", closefd=False)
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw), encoding=out.encoding, errors=out.errors,
                                  line_buffering=out.line_buffering)


def _print_error(message: str) -> None:
    """The one error format: ``minivmm: error: MESSAGE`` on one line of stderr."""
    line = " ".join(message.split())  # one line, whatever the message held
    try:
        sys.stderr.write(f"minivmm: error: {line}\n")
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        pass


def silence_stdout() -> None:
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
