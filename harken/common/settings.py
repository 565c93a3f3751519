"""What every table of a config file is (``Section``: unknown keys refused, frozen, no
nan/inf), the shared value types its keys and the command lines use (``Name`` and
``Text(...)`` for ids and names, ``Number(...)``, ``Seconds(...)``, ``Count(...)`` and
``Port`` for numbers), and the one way a secret is read from a value, a file or the
environment. The agent's config (agent/config.py) and the settings models that its sources
and sinks declare (agent/sources/, agent/sinks/) build on this, so a plugin's table is
checked like a built-in one (docs/agent.md).

Why names are bounded and printable: a machine name, node id, topic prefix or client id
becomes a file name, an MQTT topic and a client id; a control character in one is a torn
log line, a broker that drops the connection at every retry, or an escape sequence on an
operator's terminal (docs/reliability.md "Config and command line")."""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from harken.common.errors import ConfigError

__all__ = ["ClientId", "Count", "Finite", "Host", "NAME_MAX", "Name", "Number", "PathText",
           "Port", "Section", "Seconds", "SparkplugId", "Text", "TopicPrefix", "first_line",
           "resolve_password", "warn_if_others_can_read"]

log = logging.getLogger(__name__)


class Section(BaseModel):
    """One table of a config file."""
    # nan/inf are valid TOML floats, but no threshold or duration of the agent can be one
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# -- names and ids ------------------------------------------------------------------------

NAME_MAX = 64                   # a machine name or node id: file names, topics, client ids
# categories no name may hold: controls (C0, C1, DEL), format characters (bidi overrides,
# zero-width joiners: text that reads other than it is), line/paragraph separators,
# surrogates, private use, unassigned
_UNPRINTABLE = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}


@dataclass(frozen=True)
class _TextRule:
    max_length: int
    min_length: int
    chars: str | None           # a regular expression each character matches, or None: any
    said: str                   # what is allowed, in words
    forbid: str = ""
    not_only_dots: bool = False

    def __call__(self, value: str) -> str:
        if len(value) < self.min_length:
            raise ValueError(f"must not be empty; allowed: {self.said}")
        if len(value) > self.max_length:
            raise ValueError(f"{len(value)} characters, at most {self.max_length} allowed "
                             f"({self.said})")
        for i, ch in enumerate(value):
            if unicodedata.category(ch) in _UNPRINTABLE:
                raise ValueError(f"control or invisible character {ch!r} at position {i + 1}"
                                 f"; allowed: {self.said}")
            if ch in self.forbid or (self.chars and not re.fullmatch(self.chars, ch)):
                raise ValueError(f"character {ch!r} at position {i + 1} is not allowed; "
                                 f"allowed: {self.said}")
        if self.not_only_dots and value.strip(".") == "":
            raise ValueError(f"{value!r} names a folder, not a name; allowed: {self.said} "
                             f"(not only dots)")
        return value


def _text_only(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    return value


def Text(max_length: int, *, min_length: int = 1, chars: str | None = None,
         said: str | None = None, forbid: str = "", not_only_dots: bool = False) -> Any:
    """A text value, bounded in length and free of control and invisible characters
    (and of ``forbid``; each character matching ``chars`` where given). A refusal says
    what is allowed (``said``)."""
    if said is None:
        said = "text without " + (f"{' '.join(forbid)} or " if forbid else "") + \
            "control characters"
    said += f", {min_length} to {max_length} characters" if min_length else \
        f", at most {max_length} characters"
    rule = _TextRule(max_length, min_length, chars, said, forbid, not_only_dots)
    return Annotated[str, BeforeValidator(_text_only), AfterValidator(rule)]


# machine names and node ids: the characters of a file name, a topic level and a client id
# everywhere (docs/agent.md)
Name = Text(NAME_MAX, chars=r"[A-Za-z0-9_.-]", said="letters, digits, '_', '.' and '-'",
            not_only_dots=True)
# a topic root: such names joined by '/', no empty level (docs/mqtt.md)
TopicPrefix = Annotated[Text(128, chars=r"[A-Za-z0-9_./-]",
                             said="letters, digits, '_', '.', '-' and '/' between them"),
                        AfterValidator(lambda v: _levels(v))]
# Sparkplug B group and edge node ids: UTF-8 without the topic's separators and wildcards
SparkplugId = Text(NAME_MAX, forbid="/+#")
ClientId = Text(128, min_length=0)      # "": the default (docs/mqtt.md)
Host = Text(253, chars=r"[A-Za-z0-9_.:\[\]%-]",
            said="a host name or an address (letters, digits, '.', '-', ':', '[', ']')")
PathText = Text(4096)                   # a path a config names


def _levels(value: str) -> str:
    if "" in value.split("/"):
        raise ValueError(f"{value!r} has an empty topic level (a '/' at an end or '//')")
    return value


# -- numbers ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Range:
    lo: float | None
    hi: float | None
    unit: str = ""
    lo_open: bool = False
    integer: bool = False

    def allowed(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.lo is None and self.hi is None:
            return f"a finite number{unit}"
        if self.hi is None:
            return f"{'above' if self.lo_open else 'at least'} {self.lo:g}{unit}"
        if self.lo is None:
            return f"at most {self.hi:g}{unit}"
        if self.lo_open:
            return f"above {self.lo:g}, up to {self.hi:g}{unit}"
        return f"{self.lo:g} to {self.hi:g}{unit}"

    def number(self, value: Any) -> Any:
        # a TOML true is no number (pydantic would read it as 1); nor is text
        kind = "a whole number" if self.integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected {kind} ({self.allowed()}), got "
                             f"{type(value).__name__}")
        if self.integer and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected {kind} ({self.allowed()}), got {value:g}")
        if not self.integer and isinstance(value, int) and not -1e308 < value < 1e308:
            raise ValueError(f"expected {self.allowed()}")
        return int(value) if self.integer else float(value)

    def __call__(self, value: float) -> float:
        if (isinstance(value, float) and not math.isfinite(value)) or (self.lo is not None and (
                value < self.lo or (self.lo_open and value == self.lo))) \
                or (self.hi is not None and value > self.hi):
            raise ValueError(f"expected {self.allowed()}")
        return value


def Number(lo: float | None, hi: float | None, unit: str = "", *, lo_open: bool = False,
           integer: bool = False) -> Any:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``; None: unbounded),
    never a boolean; a refusal names the range and the unit."""
    rule = _Range(lo, hi, unit, lo_open, integer)
    return Annotated[int if integer else float, BeforeValidator(rule.number),
                     AfterValidator(rule)]


def Seconds(lo: float, hi: float, *, lo_open: bool = False) -> Any:
    """A duration in seconds, in range."""
    return Number(lo, hi, "seconds", lo_open=lo_open)


def Count(lo: int, hi: int | None = None, unit: str = "") -> Any:
    """A whole number in range."""
    return Number(lo, hi, unit, integer=True)


Port = Count(1, 65535)
Finite = Number(None, None)


def resolve_password(value: str | None, file: str | Path | None, env: str | None,
                     env_key: str, file_key: str = "password_file") -> str | None:
    """The one way a password is found, for the agent's config and ``harken watch``: the
    value itself, else the first line of ``file`` (warned about if others can read it),
    else the environment variable ``env``; None when none is given."""
    if value is not None:
        return value
    if file is not None:
        path = Path(file).expanduser()
        warn_if_others_can_read(path, file_key)
        try:
            return first_line(path)
        except ValueError as exc:
            raise ConfigError(f"{file_key} {path}: cannot read a password ({exc})") from None
    if env:
        found = os.environ.get(env)
        if found is None:
            raise ConfigError(f"{env_key}: environment variable {env} is not set")
        return found
    return None


FIRST_LINE_MAX = 64 * 1024      # a secret or an id, never a file's worth


def first_line(path: Path) -> str:
    """A file's first line, stripped (how secrets and provisioned ids are handed over);
    ValueError saying why when there is none. Only a regular file is read, and only its
    start: a FIFO or a device named by mistake would block or never end."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError("not a regular file")
        with open(path, "rb") as f:
            head = f.read(FIRST_LINE_MAX)
        return head.decode().splitlines()[0].strip()
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from None
    except IndexError:
        raise ValueError("empty file") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None


def warn_if_others_can_read(path: Path, what: str) -> None:
    """A secret in a file that other users can read is accepted with one warning, as ssh
    warns of keys (and refuses them; the agent only warns, a running plant matters more)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        log.warning(f"WARNING: {what} {path} can be read by other users (mode "
                    f"{mode & 0o777:o}); chmod 600 it")
