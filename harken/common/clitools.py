"""What every Harken command line shares: user mistakes (``HarkenError``, and OSError: a
file that is missing or unreadable) become one line on stderr and exit status 2, never a
traceback (``--debug`` shows it); an ``EnvironmentFailure`` (disk full, I/O error) exits 75,
which systemd restarts (docs/agent.md "Exit codes"). Any other exception is a bug and
keeps its traceback."""

from __future__ import annotations

import argparse
import sys

from harken.common.errors import EXIT_TEMPFAIL, EXIT_USER, EnvironmentFailure, HarkenError
from harken.common.logs import ENV, LEVELS, default_level, setup_logging


class _SubCommands(argparse._SubParsersAction):
    """Sub-commands that take the shared options too, so that ``--log-level`` and
    ``--debug`` work after the sub-command as well as before it."""

    def add_parser(self, name, **kwargs):
        sub = super().add_parser(name, **kwargs)
        _shared_options(sub, argparse.SUPPRESS)        # given here, it overrides the top's
        return sub


def _shared_options(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--debug", action="store_true", default=default or False,
                        help="show tracebacks on errors")
    parser.add_argument("--log-level", type=str.lower, choices=LEVELS,
                        default=default or default_level(),
                        help=f"messages shown on stderr (default: ${ENV}, else info)")


def command_parser(prog: str, description: str | None
                   ) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A parser with ``--debug`` and ``--log-level`` (which ``run_command`` reads; before
    or after the sub-command) and required sub-commands."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.register("action", "parsers", _SubCommands)
    _shared_options(parser, None)
    return parser, parser.add_subparsers(dest="command", required=True)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None,
                user_errors: tuple[type[BaseException], ...] = (HarkenError, OSError)) -> int:
    """Parse ``argv``, run the chosen sub-command's ``func`` and map errors to exit codes."""
    args = parser.parse_args(argv)
    setup_logging(parser.prog, args.log_level)
    try:
        return args.func(args)
    except user_errors as exc:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_TEMPFAIL if isinstance(exc, EnvironmentFailure) else EXIT_USER
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
