"""Logging for every Harken command: one handler on the ``harken`` logger that writes one
line per message to stderr, prefixed with the command's name (and ``WARNING:`` or
``ERROR:`` above INFO, so a warning reads as one in a terminal and in the journal). Library
modules only call ``logging.getLogger(__name__)``: their loggers are children of
``harken`` and inherit its level, which ``--log-level`` (or ``HARKEN_LOG_LEVEL``) sets."""

from __future__ import annotations

import logging
import os
import sys

LEVELS = ("debug", "info", "warning", "error")
ENV = "HARKEN_LOG_LEVEL"


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (a test's capture,
    a daemon's redirected stream), not the one there was when logging was set up."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Format(logging.Formatter):
    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        tag = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        if tag and text.startswith(tag):          # a message that names its own level
            tag = ""
        return f"{self.prog}: {tag}{text}"


def default_level() -> str:
    """``HARKEN_LOG_LEVEL`` when it names a level (how a systemd unit sets it), else info."""
    level = os.environ.get(ENV, "").strip().lower()
    return level if level in LEVELS else "info"


def setup_logging(prog: str, level: str = "info") -> logging.Logger:
    """Route the ``harken`` logger tree to stderr at ``level``; safe to call again (a
    second call only changes the level and the name in the prefix)."""
    log = logging.getLogger("harken")
    handler = next((h for h in log.handlers if getattr(h, "_harken", False)), None)
    if handler is None:
        handler = _Stderr()
        handler._harken = True                    # type: ignore[attr-defined]
        log.addHandler(handler)
    handler.setFormatter(_Format(prog))
    log.setLevel(getattr(logging, level.upper()))
    wrong = os.environ.get(ENV, "").strip()
    if wrong and wrong.lower() not in LEVELS:
        log.warning(f"{ENV}={wrong!r} is not a level ({', '.join(LEVELS)}); ignored")
    return log
