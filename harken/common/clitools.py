"""What every Harken command line shares: user mistakes (``HarkenError``, and OSError: a
file that is missing or unreadable) become one line on stderr and exit status 2, never a
traceback (``--debug`` shows it); an ``EnvironmentFailure`` (disk full, I/O error) exits 75,
which systemd restarts (docs/agent.md "Exit codes"). Any other exception is a bug and
keeps its traceback. An option's value is checked by ``arg``: the same shared types as the
config's keys (harken/common/settings.py), so ``--threads`` and ``model.threads`` refuse alike."""

from __future__ import annotations

import argparse
import os
import re
import select
import sys
import typing
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

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


def arg(kind: Any) -> Callable[[str], Any]:
    """An argparse ``type`` that reads an option's text as the shared value type ``kind``
    (``Count(1, 64, "threads")``, ``Seconds(...)``, ``Name``, ...): nan, inf, 1e400, a
    fraction for a whole number, a value out of range or a name with a control character
    are a usage error (exit 2) naming the option and what is allowed."""
    adapter = TypeAdapter(kind)
    base = typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Annotated else kind
    while typing.get_origin(base) is typing.Annotated:        # a type built on another
        base = typing.get_args(base)[0]

    def parse(text: str) -> Any:
        value: Any = text
        try:
            if base is int and re.fullmatch(r"\s*[+-]?\d{4300,}\s*", text):
                # more digits than Python reads as an int: some huge number, out of range
                value = -(10 ** 4000) if text.strip().startswith("-") else 10 ** 4000
            elif base is int:
                value = int(text.strip())
            elif base is float:
                value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text[:40]!r} is not {'a whole number' if base is int else 'a number'}"
            ) from None
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            said = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            raise argparse.ArgumentTypeError(f"{text[:40]!r}: {said}") from None
    parse.__name__ = getattr(base, "__name__", "value")
    return parse


def command_parser(prog: str, description: str | None
                   ) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A parser with ``--debug`` and ``--log-level`` (which ``run_command`` reads; before
    or after the sub-command) and required sub-commands."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.register("action", "parsers", _SubCommands)
    _shared_options(parser, None)
    return parser, parser.add_subparsers(dest="command", required=True)


def _one_value_each(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse reads ``--config=--`` as an empty list without calling the option's type
    (CPython's argparse drops the ``--``): an option that takes one value refuses it here,
    as it refuses ``--config`` with no value, instead of a list reaching the command."""
    parsers = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest, None)
            parsers += [action.choices[chosen]] if chosen in action.choices else []
    for p in parsers:
        for action in p._actions:
            if type(action) is argparse._StoreAction and action.nargs is None \
                    and action.option_strings and getattr(args, action.dest, None) == []:
                p.error(f"argument {'/'.join(action.option_strings)}: expected one argument")


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None,
                user_errors: tuple[type[BaseException], ...] = (HarkenError, OSError)) -> int:
    """Parse ``argv``, run the chosen sub-command's ``func`` and map errors to exit codes.
    An argument argparse refuses is its usage line and message on stderr and exit 2, returned
    like every other status (so that ``main(argv)`` called in-process returns it too)."""
    try:
        args = parser.parse_args(argv)
        _one_value_each(parser, args)
    except SystemExit as exc:                  # argparse's usage error (2) or --help (0)
        return exc.code if isinstance(exc.code, int) else 2
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
    finally:
        stdout_to_devnull_if_its_reader_left()


def _reader_left(fd: int) -> bool:
    """A pipe or socket whose reader has closed it polls as an error (POLLERR, POLLHUP) on
    Linux, whether or not anything is still waiting in Python's buffer."""
    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def stdout_to_devnull_if_its_reader_left() -> None:
    """``harken run ... | head``: a command whose reader went away has already said so (the
    sink's warning, watch's end) and goes on; but Python flushes stdout once more at exit,
    and a flush into the closed pipe turns the command's own exit status into 120 with an
    "Exception ignored ... BrokenPipeError" (more likely on a slow machine, where a write is
    still buffered then). Pointing stdout at os.devnull first is the recipe of the Python
    docs (library/signal.html, "Note on SIGPIPE"), so the status stays the command's."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):   # replaced (tests, in-process) or closed
        return
    try:
        sys.stdout.flush()
        gone = _reader_left(fd)
    except BrokenPipeError:
        gone = True
    except (OSError, ValueError):
        return
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
