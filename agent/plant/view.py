"""The fleet as a rich table, its cost bounded by what fits on the screen.

Every text from the broker reaches the table through ``text.visible`` (controls replaced,
never parsed as markup). Rows are ranked, anomalies first, then agents that are not online or
whose audio is not ok, then by name, and only the first ``max_rows`` are built: a fleet of
a thousand agents costs one sort per refresh, not a thousand rows of layout.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Protocol

from harken.agent.plant.text import safe, visible


class Shown(Protocol):
    """What the table reads of a fleet (agent/plant/fleet.py ``Fleet``, which renders
    itself through this module: a Protocol, so that this module need not import it)."""
    prefix: str
    agents: Mapping[tuple[str, str], Any]
    malformed: int
    forgotten: int
    pruned: int
    stale_deaths: int
    max_agents: int
    forget_after_s: float

COLUMNS = ("node", "machine", "score", "threshold", "anomaly", "audio", "status", "seq",
           "last seen")


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def _age(now: float, then: float) -> str:
    if math.isnan(then):
        return "-"
    age = now - then
    if age < -60:
        return "ahead"                   # the agent's clock is ahead of this one
    if age < 3600:
        return f"{max(age, 0):.0f} s ago"
    if age < 86400 * 2:
        return f"{age / 3600:.1f} h ago"
    return f"{age / 86400:.0f} d ago"


def _seen(now: float, row):
    """The last-seen cell: a score from an agent whose clock is not set is aged from its
    arrival here, and says so (its ``ts`` may be 1970; docs/watch.md)."""
    from rich.text import Text
    if row.clock_unsynced:
        return Text(f"{_age(now, row.last_seen)}, clock not set", style="yellow")
    return _age(now, row.last_seen)


def _rank(row) -> tuple:
    audio = "lost" if row.lost else row.audio
    trouble = row.status not in (None, "online") or audio not in ("ok", "-")
    return (row.anomaly != "ON", not trouble, row.node, row.machine)


def table(fleet: Shown, now: float | None = None, max_rows: int | None = None, banner=None):
    """The fleet's table: at most ``max_rows`` rows (all when None), ``banner`` (lines
    about the connection) under the title."""
    from rich.table import Table
    from rich.text import Text
    now = time.time() if now is None else now
    rows = sorted(fleet.agents.values(), key=_rank)
    shown = rows if max_rows is None else rows[:max(max_rows, 0)]
    title = Text(f"harken fleet under '{safe(fleet.prefix)}/'")
    for line, style in banner or ():
        title.append("\n" + safe(line, 200), style=style)
    notes = []
    if len(shown) < len(rows):
        notes.append(f"showing {len(shown)} of {len(rows)} machines (anomalies and problems "
                     "first)")
    if fleet.malformed:
        notes.append(f"{fleet.malformed} malformed message(s) skipped")
    if fleet.forgotten:
        notes.append(f"{fleet.forgotten} machine(s) forgotten beyond the limit of "
                     f"{fleet.max_agents} (--max-machines)")
    if fleet.pruned:
        notes.append(f"{fleet.pruned} machine(s) forgotten after "
                     f"{fleet.forget_after_s / 60:g} min of silence")
    if fleet.stale_deaths:
        notes.append(f"{fleet.stale_deaths} stale Sparkplug death(s) ignored (old bdSeq)")
    t = Table(title=title, expand=False, caption="\n".join(notes) or None)
    for col in COLUMNS:
        t.add_column(col, justify="right" if col in ("score", "threshold", "seq") else "left")
    for r in shown:
        audio = "lost" if r.lost else r.audio   # a lost input stops the scores
        status = r.status or "?"
        # a machine in maintenance raises no alarm (docs/watch.md): said beside its status
        shown_status = Text(safe(status, 16), style="" if status == "online" else "yellow")
        if getattr(r, "maintenance", None):
            shown_status.append(" maintenance", style="bold cyan")
        t.add_row(visible(r.node), visible(r.machine), _num(r.score), _num(r.threshold),
                  Text(safe(r.anomaly, 12), style="bold red" if r.anomaly == "ON" else ""),
                  Text(safe(audio, 12), style="" if audio in ("ok", "-") else "yellow"),
                  shown_status,
                  "" if r.seq is None else str(r.seq), _seen(now, r))
    return t
