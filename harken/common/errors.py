"""User mistakes, as distinct from bugs.

Every error a user can cause and fix (a bad config key, a missing file, a corrupt bundle, a
setting out of range, data that cannot be used) is a ``HarkenError``: the command line
prints its one-line message and exits 2 (``EXIT_USER``). A failure of the device's
environment that no edit fixes (a full disk, an I/O error, a damaged runtime file) is an
``EnvironmentFailure``: one line too, but exit 75 (``EXIT_TEMPFAIL``, sysexits.h's
EX_TEMPFAIL), which the systemd unit restarts, while it does not restart exit 2
(docs/agent.md "Exit codes"). Anything else is a bug and keeps its traceback.
Each subclass also derives from the builtin it refines (ValueError, OSError), so code that
catches those keeps working.
"""

from __future__ import annotations

import errno

EXIT_USER = 2          # the user must edit something: systemd does not restart it
EXIT_TEMPFAIL = 75     # the environment failed (EX_TEMPFAIL): systemd restarts, backing off

# OSError numbers that say the device, not the settings, failed: a start that hits one is
# retried by systemd (a disk that filled, a card that threw an I/O error, a device not
# there yet). EACCES, ENOENT, EROFS and the like stay user mistakes: an edit fixes them.
TRANSIENT_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ENOSPC", "EDQUOT", "EIO", "ENOMEM", "EAGAIN", "EBUSY", "ENODEV", "ENXIO", "ETIMEDOUT",
    "ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "ESTALE", "EUCLEAN", "EINTR")
    if hasattr(errno, name))


class HarkenError(Exception):
    """A user-facing error: its message names the file, key or value and what was expected."""


class UsageError(HarkenError, ValueError):
    """A command-line argument or setting that is out of range or unknown."""


class DataError(HarkenError, ValueError):
    """Audio, clips or scores that cannot be used as given (too few, too short, missing)."""


class ConfigError(HarkenError, ValueError):
    """A configuration the agent refuses; the message names the file and the key."""


class EnvironmentFailure(HarkenError, OSError):
    """The device's environment failed (disk full, I/O error, a damaged runtime file): not
    the user's settings. One line, exit 75, restarted by systemd (docs/agent.md "Exit codes")."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the environment (``TRANSIENT_ERRNOS``) rather than a
    setting the user must change."""
    return isinstance(exc, EnvironmentFailure) or (
        isinstance(exc, OSError) and not isinstance(exc, HarkenError)
        and exc.errno in TRANSIENT_ERRNOS)
