"""User mistakes, as distinct from bugs.

Every error a user can cause and fix (a bad config key, a missing file, a corrupt bundle, a
setting out of range, data that cannot be used) is a ``HarkenError``: the command line
prints its one-line message and exits 2. Anything else is a bug and keeps its traceback.
Each subclass also derives from the builtin it refines (ValueError, OSError), so code that
catches those keeps working.
"""

from __future__ import annotations


class HarkenError(Exception):
    """A user-facing error: its message names the file, key or value and what was expected."""


class UsageError(HarkenError, ValueError):
    """A command-line argument or setting that is out of range or unknown."""


class DataError(HarkenError, ValueError):
    """Audio, clips or scores that cannot be used as given (too few, too short, missing)."""


class ConfigError(HarkenError, ValueError):
    """A configuration the agent refuses; the message names the file and the key."""
