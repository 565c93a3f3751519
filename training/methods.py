"""Registry of trainable methods: name -> class with train(), load() and score()."""

from __future__ import annotations

from training.baselines import KnnBaseline

METHODS = {KnnBaseline.name: KnnBaseline}


def method_class(name: str):
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; choose one of {sorted(METHODS)}") from None
