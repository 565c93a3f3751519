"""What every table of a config file is (``Section``: unknown keys refused, frozen, no
nan/inf), and the one way a secret is read from a value, a file or the environment. The
agent's config (agent/config.py) and the settings models that its sources and sinks
declare (agent/sources/, agent/sinks/) build on this, so a plugin's table is checked like a
built-in one (docs/agent.md)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from harken.common.errors import ConfigError

__all__ = ["Section", "first_line", "resolve_password", "warn_if_others_can_read"]

log = logging.getLogger(__name__)


class Section(BaseModel):
    """One table of a config file."""
    # nan/inf are valid TOML floats, but no threshold or duration of the agent can be one
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


def first_line(path: Path) -> str:
    """A file's first line, stripped (how secrets and provisioned ids are handed over);
    ValueError saying why when there is none."""
    try:
        return Path(path).read_text().splitlines()[0].strip()
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
