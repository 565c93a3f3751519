"""What every Harken command line shares: user mistakes (``HarkenError``, and OSError: a
file that is missing or unreadable) become one line on stderr and exit status 2, never a
traceback (``--debug`` shows it). Any other exception is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import sys

from harken.common.errors import HarkenError


def command_parser(prog: str, description: str | None
                   ) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A parser with ``--debug`` (which ``run_command`` reads) and required sub-commands."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parser, parser.add_subparsers(dest="command", required=True)


def _log_to_stderr(prog: str) -> None:
    """The ``harken`` logger writes one line per message to stderr, as every command's own
    messages do (configured once; library code only calls logging)."""
    import logging
    log = logging.getLogger("harken")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None,
                user_errors: tuple[type[BaseException], ...] = (HarkenError, OSError)) -> int:
    """Parse ``argv``, run the chosen sub-command's ``func`` and map errors to exit codes."""
    args = parser.parse_args(argv)
    _log_to_stderr(parser.prog)
    try:
        return args.func(args)
    except user_errors as exc:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
