"""THROW-AWAY STAND-IN for part A's feedback core (issue 40): the lead replaces this file
with part A's at merge. It only appends the audit line and returns a dict, with the
signatures of the shared design, so that the dispatcher's plumbing can be tested."""

from __future__ import annotations

from harken.agent.operator import audit


def _done(config, action: str, operator: str, via: str, command_id: str | None,
          **details) -> dict:
    state = config.path(config.agent.state_dir)
    line = {"machine": config.agent.machine, "action": action, "outcome": "ok",
            "operator": operator, "via": via, "command_id": command_id, **details}
    audit.append(state, line)
    return {"action": action, **details}


def mark_normal(config, *, event: int | None = None, start: float | None = None,
                end: float | None = None, operator: str, via: str,
                command_id: str | None = None) -> dict:
    return _done(config, "feedback", operator, via, command_id, event=event, start=start,
                 end=end, intervals=[], threshold_before=None, threshold_after=None)


def undo(config, *, operator: str, via: str, command_id: str | None = None) -> dict:
    return _done(config, "undo", operator, via, command_id)


def recalibrate(config, *, hours: float = 24.0, false_alarms_per_week: float = 1.0,
                operator: str, via: str, command_id: str | None = None) -> dict:
    return _done(config, "recalibrate-threshold", operator, via, command_id, hours=hours,
                 false_alarms_per_week=false_alarms_per_week)


def live_state(config, bundle):
    return None, None
