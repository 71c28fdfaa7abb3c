"""argparse, with minivmm's error wording and a help layout that stays readable at 80 columns.

argparse reports usage errors by calling ``error(message)`` and exiting; :class:`Parser` raises a
:class:`~minivmm.cli.errors.UsageError` instead, after rewording argparse's messages into ours, so the
entry point prints every error the same way.
"""

from __future__ import annotations

import argparse
import re

from minivmm.cli.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time); mypy knows the name
if TYPE_CHECKING:
    from typing import NoReturn

#: Help never grows wider than this, however wide the terminal: long lines are hard to read.
MAX_HELP_WIDTH = 100


def _terminal_columns() -> int:
    """$COLUMNS, else the terminal's width, else 80: what shutil.get_terminal_size() answers, without
    importing shutil (and bz2, lzma...) on every start-up: argparse builds a formatter for every
    subparser, not only for help."""
    import os
    import sys
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter with a "Usage:" heading, width capped, and descriptions/epilogs that keep
    their paragraphs and their indented (preformatted) lines."""

    def __init__(self, prog: str) -> None:
        width = min(_terminal_columns(), MAX_HELP_WIDTH) - 2
        super().__init__(prog, width=max(width, 40), max_help_position=26)

    def add_usage(self, usage, actions, groups, prefix=None):  # type: ignore[no-untyped-def]
        """Start the usage line with "Usage: " (argparse's default is lower-case)."""
        super().add_usage(usage, actions, groups, "Usage: " if prefix is None else prefix)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        """``-m, --mem SIZE`` rather than argparse's ``-m SIZE, --mem SIZE``."""
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"

    def _split_lines(self, text: str, width: int) -> list[str]:
        """Wrap option help without breaking words at hyphens (``--list-sequences`` stays whole)."""
        import textwrap
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Wrap each paragraph of ``text`` on its own; lines starting with a space are kept as written."""
        import textwrap
        out: list[str] = []
        for block in text.split("\n\n"):
            lines = block.splitlines()
            if any(line.startswith(" ") for line in lines[1:]) or (lines and lines[0].startswith(" ")):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(block.split()), width, initial_indent=indent,
                                         subsequent_indent=indent, break_on_hyphens=False))
        return "\n\n".join(out)


# argparse's own messages, and how we say them. Matched against the message argparse passes to error().
_REWORDS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^unrecognized arguments: (?P<a>.*)$"), "unknown option or extra argument: {a}"),
    (re.compile(r"^argument (?P<o>\S+): expected one argument$"), "{o} needs a value"),
    (re.compile(r"^argument (?P<o>\S+): ignored explicit argument (?P<v>.*)$"), "{o} takes no value (got {v})"),
    (re.compile(r"^argument (?P<o>\S+): not allowed with argument (?P<p>\S+)$"), "{o} cannot be used with {p}"),
    (re.compile(r"^argument (?P<o>\S+): invalid choice: '(?P<v>[^']*)'.*$"), "unknown {o} '{v}'"),
    (re.compile(r"^argument (?P<o>\S+): (?P<m>.*)$"), "{o}: {m}"),
    (re.compile(r"^ambiguous option: (?P<a>\S+) could match (?P<b>.*)$"), "ambiguous option {a} (could be {b})"),
]


def reword(message: str) -> str:
    """Say an argparse error message in minivmm's words; option aliases collapse to the long name."""
    for pattern, template in _REWORDS:
        m = pattern.match(message)
        if m:
            groups = {k: _long_name(v) if k in ("o", "p") else v for k, v in m.groupdict().items()}
            return template.format(**groups)
    return message


def _long_name(names: str) -> str:
    """``-m/--mem`` -> ``--mem``: name an option the way its help shows it first."""
    parts = names.split("/")
    return next((p for p in parts if p.startswith("--")), parts[0])


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` (one line, our wording) instead of exiting."""

    def __init__(self, *args, example: str | None = None, **kwargs) -> None:  # type: ignore[no-untyped-def]
        """``example``: a command line that works, shown when a required argument is missing."""
        self.example = example
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # --mem, not --me: an abbreviation breaks when options grow
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Raise the usage error; ``main`` prints it as ``minivmm: error: ...`` and exits 2."""
        m = re.match(r"^argument (?:COMMAND|command): invalid choice: '([^']*)'", message)
        if m:
            raise UsageError(f"unknown command '{m.group(1)}' (see minivmm --help)")
        m = re.match(r"^the following arguments are required: (.*)$", message)
        if m:
            hint = f"e.g. {self.example}" if self.example else f"see {self.prog} --help"
            raise UsageError(f"{self.prog} needs {m.group(1)} ({hint})")
        raise UsageError(reword(message))
