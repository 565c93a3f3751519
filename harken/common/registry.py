"""Name -> class tables for the agent's seams (score rules, audio sources, sinks): a class
registers itself by its ``name`` with a decorator, so adding one is one module and one
import."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T", bound=type)


class Registry(dict):
    """Classes by their ``name`` attribute, in registration order."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def register(self, cls: T) -> T:
        """Class decorator: make ``cls`` the {what} called ``cls.name``."""
        if cls.name in self:
            raise ValueError(f"{self.what} {cls.name!r} is registered twice")
        self[cls.name] = cls
        return cls
