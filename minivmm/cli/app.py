"""The ``minivmm`` application and its entry point, the one place where errors become exit codes.

Click's own handling is switched off (``standalone_mode=False``) so that every failure, a usage error
included, ends as one line ``minivmm: error: ...`` on stderr and a documented exit code, never a
traceback.
"""

from __future__ import annotations

import sys

import typer

from minivmm.cli import boot_cmd, info_cmd, model_cmd, timing_cmd
from minivmm.cli.errors import CliError, ExitCode

app = typer.Typer(
    name="minivmm",
    help="A pure-Python mini-VMM on /dev/kvm, with an executable model of KVM's io_bus and Tree SRCU.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
boot_cmd.register(app)
info_cmd.register(app)
model_cmd.register(app)
timing_cmd.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return (and, as a console script, exit with) the exit code."""
    try:
        rv = app(args=argv, prog_name="minivmm", standalone_mode=False)
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        code = ExitCode.INTERRUPTED
    except typer.TyperException as e:  # usage errors: bad option, bad value, missing argument
        ctx = getattr(e, "ctx", None)
        where = f"minivmm {ctx.info_name}: " if ctx is not None and ctx.parent is not None else "minivmm: "
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if message:  # empty when the command only showed its help (no arguments given)
            print(f"{where}error: {message}", file=sys.stderr)
        code = ExitCode.BAD_INPUT
    except CliError as e:
        print(f"minivmm: error: {e}", file=sys.stderr)
        code = e.code
    except KeyboardInterrupt:
        code = ExitCode.INTERRUPTED
    except BrokenPipeError:
        code = ExitCode.OK  # the reader went away (e.g. `| head`): not our failure
    else:
        code = rv if isinstance(rv, int) else ExitCode.OK
    return int(code)


def console_main() -> None:
    """The console-script entry point."""
    sys.exit(main())
