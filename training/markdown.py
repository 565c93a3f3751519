"""Markdown tables for the generated pages (docs/results.md, docs/benchmarks.md): written
here once instead of by hand in every report."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def row(cells: Sequence[object]) -> str:
    """One table line: ``| a | b |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
    """Header, separator and one line per row, cells as given (format them before)."""
    return [row(header), "|" + "---|" * len(header)] + [row(r) for r in rows]
