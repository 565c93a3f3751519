"""The one command dispatcher (docs/agent.md "The control socket", docs/mqtt.md
"Commands"): the control socket, MQTT and Sparkplug DCMD hand it a raw payload and where it
came from; it checks the command, carries it out once, logs every outcome in the audit log
and updates the running machine.

Why so strict: a command changes what a plant hears from a machine (silenced, or taught
that a sound is normal). So a payload over 64 KiB is refused unparsed, unknown keys and
wrong types are refused with the key named, an ``id`` already carried out is refused as a
replay (an MQTT redelivery, a retried request: never done twice), and a refusal changes
nothing but is logged too (unsynced, rate-limited: agent/operator/audit.py). One command at
a time (a lock): two operators' feedback never interleave on one bank.

The ids carried out are kept in their own small file, ``state_dir/commands-done.jsonl``
(those of the last ``DONE_DAYS`` days or the last ``DONE_KEEP``, whichever are more, at
most ``DONE_MAX``; one synced line each), not looked up in the audit log: a flood of
refused junk rotates the audit log but never reaches this file, so it cannot make the agent
forget an id and carry out its replay. A command that changes nothing (maintenance off when
off) is answered ok with ``"unchanged": true`` and takes no slot there, its audit line
unsynced and rate-limited (agent/operator/maintenance.py): valid no-ops in bulk neither
push real ids out nor wear the card. The audit log's last lines are looked at
too, for the instant between a change (its audit line written) and the line of its id.

Commands (JSON objects; ``machine`` comes from the topic over MQTT, from the key over the
socket, optional where the daemon watches one machine)::

    {"id": "...", "command": "maintenance", "operator": "alice", "state": "on", "for": "2h"}
    {"id": "...", "command": "feedback", "operator": "alice", "event": 1234}
    {"id": "...", "command": "feedback", "operator": "alice", "from": T, "to": T}
    {"id": "...", "command": "feedback", "operator": "alice", "undo": true}
    {"id": "...", "command": "recalibrate-threshold", "operator": "alice", "hours": 24,
     "false_alarms_per_week": 1}

The reply: ``{"id", "command", "machine", "ok", "reason", "result"}``.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from harken.common.atomic import write_atomic
from harken.common.errors import HarkenError
from harken.common.records import Record, explain
from harken.common.settings import Name, Number, Text
from harken.agent.decision.records import MaintenanceChanged, StatusEvent
from harken.agent.operator import audit
from harken.agent.operator.maintenance import Maintenance, parse_duration

_log = logging.getLogger(__name__)

MAX_BYTES = 64 * 1024
ID_MAX = 128
DONE_NAME = "commands-done.jsonl"    # prefix reserved against mqtt.outbox (agent/sinks/mqtt)
DONE_KEEP = 1000                     # ids kept: those of the last DONE_DAYS days or the
DONE_DAYS = 7                        # last DONE_KEEP, whichever are more, at most DONE_MAX
DONE_MAX = 100_000
_LINE_MIN = 64                       # bytes: no line of the file is shorter
_TAIL_BYTES = 256 * 1024
CommandId = Text(ID_MAX)
Operator = Text(128)


class CommandRefused(HarkenError, ValueError):
    """A command the dispatcher did not carry out; its reason is the message."""


def _epoch(value: Any) -> float:
    """A time as UTC epoch seconds: a number, or ISO 8601 text (without an offset: the
    device's local time)."""
    said = "expected epoch seconds or an ISO 8601 time, from 1970 to 5138"
    t: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        t = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str):
        try:
            t = float(value)
        except ValueError:
            try:
                t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
            except (ValueError, OverflowError, OSError):
                raise ValueError(said) from None
    if t is None or not math.isfinite(t) or not 0 <= t < 1e11:
        raise ValueError(said)
    return t


def _reason(exc: ValidationError) -> str:
    """The first thing wrong with a command, in one line: the key and what was expected
    (a rule across keys: its sentence alone)."""
    err = exc.errors()[0]
    if not err["loc"]:
        return err["msg"].removeprefix("Value error, ")
    return explain(exc).replace("Value error, ", "")


def _done_lines(state_dir: Path) -> list[str]:
    try:
        return (Path(state_dir) / DONE_NAME).read_text(encoding="utf-8",
                                                       errors="replace").splitlines()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return []


def carried_out(state_dir: Path, machine: str, command_id: str) -> dict | None:
    """The record of command ``command_id`` of ``machine`` having been carried out (its
    ``at``), or None: from the file of ids (module docstring), else the audit log's last
    lines (a kill between a change and its id's line)."""
    for raw in reversed(_done_lines(state_dir)):
        try:
            line = json.loads(raw)
        except ValueError:                   # a torn line: a kill mid-write
            continue
        if isinstance(line, dict) and line.get("machine") == machine and \
                line.get("id") == command_id:
            return line
    return audit.find_command(state_dir, machine, command_id, tail_bytes=_TAIL_BYTES)


def remember(state_dir: Path, machine: str, command_id: str) -> None:
    """Command ``command_id`` of ``machine`` was carried out: one synced line (after a torn
    one, on a line of its own). The file keeps the ids of the last ``DONE_DAYS`` days or the
    last ``DONE_KEEP``, whichever are more, never over ``DONE_MAX`` (rewritten atomically
    when enough can go): a replay window counted in commands alone would let a burst of
    valid commands push an operator's id out within seconds and its replay through."""
    path = Path(state_dir) / DONE_NAME
    data = (json.dumps({"at": audit.now_iso(), "machine": machine, "id": command_id})
            + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if size + len(data) < 2 * DONE_KEEP * _LINE_MIN:
        return                               # surely under 2 * DONE_KEEP lines
    lines = _done_lines(state_dir)
    drop = _droppable(lines, time.time())
    if drop >= max(DONE_KEEP, len(lines) // 10):   # not rewritten for every line
        write_atomic(path, "\n".join(lines[drop:]) + "\n")


def _droppable(lines: list[str], now: float) -> int:
    """How many of the oldest ``lines`` may go: those older than ``DONE_DAYS`` days beyond
    the last ``DONE_KEEP``, and at any rate all but the last ``DONE_MAX``."""
    def at(raw: str) -> float:
        try:
            return dt.datetime.fromisoformat(json.loads(raw)["at"]).timestamp()
        except (ValueError, TypeError, KeyError, OverflowError):
            return 0.0                       # a torn line: as old as can be
    young = bisect.bisect_left(lines, now - DONE_DAYS * 86400.0, key=at)
    return max(0, min(young, len(lines) - DONE_KEEP), len(lines) - DONE_MAX)


class _Command(Record):
    id: CommandId
    command: str
    operator: Operator
    machine: Name | None = None


class MaintenanceCommand(_Command):
    command: Literal["maintenance"]
    state: Literal["on", "off", "status"]
    for_: str | float | None = Field(None, alias="for")

    @model_validator(mode="after")
    def _duration(self):
        if self.for_ is not None:
            if self.state != "on":
                raise ValueError(f"'for' goes with state 'on', not {self.state!r}")
            parse_duration(self.for_, "for")       # UsageError: a ValueError, its line kept
        return self


class FeedbackCommand(_Command):
    command: Literal["feedback"]
    event: Number(0, 2**63 - 1, integer=True) | None = None
    from_: str | float | None = Field(None, alias="from")
    to: str | float | None = None
    undo: bool = False

    @model_validator(mode="after")
    def _one_form(self):
        forms = [self.event is not None, self.from_ is not None or self.to is not None,
                 self.undo]
        if sum(forms) != 1:
            raise ValueError("give exactly one of 'event', 'from' and 'to', or 'undo': true")
        if forms[1]:
            if self.from_ is None or self.to is None:
                raise ValueError("'from' and 'to' go together")
            if _epoch(self.from_) >= _epoch(self.to):
                raise ValueError("'from' must be before 'to'")
        return self


class RecalibrateCommand(_Command):
    command: Literal["recalibrate-threshold"]
    hours: Number(0, 24 * 365, "hours", lo_open=True) = 24.0
    false_alarms_per_week: Number(0, 10000, lo_open=True) = 1.0


MODELS: dict[str, type[_Command]] = {"maintenance": MaintenanceCommand,
                                     "feedback": FeedbackCommand,
                                     "recalibrate-threshold": RecalibrateCommand}


@dataclass
class Target:
    """One machine a command may reach: its config view, its maintenance state, and in a
    running daemon its bundle, pipeline (to swap rule and threshold after feedback) and the
    way to its sinks (MaintenanceChanged). The CLI without a daemon has no pipeline."""
    config: Any
    maintenance: Maintenance
    bundle: Any = None
    pipeline: Any = None
    send: Callable[[StatusEvent], None] | None = None


class Commands:
    """The dispatcher of one state folder's machines (``targets`` by name)."""

    def __init__(self, state_dir: Path, targets: dict[str, Target] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.targets: dict[str, Target] = dict(targets or {})
        self._lock = threading.Lock()

    def for_machine(self, machine: str) -> Callable[[bytes, str], dict]:
        """``handle`` bound to one machine: what a sink of that machine (its MQTT command
        topic) is given (agent/sinks/base.py ``CommandHandler``)."""
        return functools.partial(self.handle, machine=machine)

    def handle(self, raw: bytes, via: str, machine: str | None = None,
               refuse: str | None = None) -> dict:
        """One command in, its reply out; never raises (a bug is logged and refused).
        ``refuse``: a refusal its carrier already made (MQTT: retained, oversized, sent as
        ``raw`` = b""), logged here like any other so the audit log holds every outcome."""
        reply: dict = {"id": None, "command": None, "machine": machine, "ok": False,
                       "reason": None, "result": None}
        operator = None
        try:
            if len(raw) > MAX_BYTES:
                raise CommandRefused(f"payload of {len(raw)} bytes, over the limit of "
                                     f"{MAX_BYTES} bytes (not read)")
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError):
                raise CommandRefused(refuse or "not a JSON object (malformed JSON)") from None
            if not isinstance(data, dict):
                raise CommandRefused(refuse or f"not a JSON object but {type(data).__name__}")
            cid = data.get("id")
            if isinstance(cid, str) and 0 < len(cid) <= ID_MAX:
                reply["id"] = cid
            if isinstance(data.get("command"), str) and len(data["command"]) <= 64:
                reply["command"] = data["command"]
            if isinstance(data.get("operator"), str) and len(data["operator"]) <= 128:
                operator = data["operator"]
            if machine is None and isinstance(data.get("machine"), str):
                reply["machine"] = data["machine"][:64]
            if refuse is not None:
                raise CommandRefused(refuse)
            name = self._machine(machine, data.get("machine"))
            reply["machine"] = name
            model = MODELS.get(data.get("command")) if isinstance(data.get("command"), str) \
                else None
            if model is None:
                known = ", ".join(sorted(MODELS))
                raise CommandRefused(f"key 'command' = {str(data.get('command'))[:40]!r}: "
                                     f"unknown command (known: {known})")
            try:
                cmd = model.model_validate(data)
            except ValidationError as exc:
                raise CommandRefused(_reason(exc)) from None
            with self._lock:
                reply["result"] = self._run(cmd, self.targets[name], via)
            reply["ok"] = True
        except HarkenError as exc:
            reply["reason"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        except OSError as exc:                 # a full or failing disk: the device's
            where = f"{exc.filename}: " if exc.filename else ""
            reply["reason"] = f"{where}cannot write the state ({exc.strerror or exc})"
        except Exception as exc:               # noqa: BLE001 - a bug: refused, said, logged
            _log.exception("a command failed")
            reply["reason"] = f"internal error ({type(exc).__name__}: {exc})"
        if not reply["ok"]:
            self._refused(reply, operator, via)
        return reply

    def _machine(self, bound: str | None, given: Any) -> str:
        names = sorted(self.targets)
        if bound is not None:
            if given is not None and given != bound:
                raise CommandRefused(f"key 'machine' = {str(given)[:64]!r} does not match the "
                                     f"machine of the topic ({bound!r})")
            if bound not in self.targets:
                raise CommandRefused(f"no machine {bound!r} (machines: {names})")
            return bound
        if given is None:
            if len(names) == 1:
                return names[0]
            raise CommandRefused(f"key 'machine' missing: this agent watches {names}")
        if not isinstance(given, str) or given not in self.targets:
            raise CommandRefused(f"key 'machine' = {str(given)[:64]!r}: no such machine "
                                 f"(machines: {names})")
        return given

    def _run(self, cmd: _Command, target: Target, via: str) -> dict:
        if isinstance(cmd, MaintenanceCommand) and cmd.state == "status":
            return target.maintenance.state()           # a question: no change, no replay
        machine = target.config.agent.machine
        done = carried_out(self.state_dir, machine, cmd.id)
        if done is not None:
            raise CommandRefused(f"command id {cmd.id!r} was already carried out (at "
                                 f"{done.get('at')}): a replay changes nothing")
        if isinstance(cmd, MaintenanceCommand):
            result = self._maintenance(cmd, target, via)
            if result.get("unchanged"):
                return result                   # nothing done: its id takes no slot
        else:
            result = self._feedback(cmd, target, via)
        try:
            remember(self.state_dir, machine, cmd.id)
        except OSError as exc:                  # done all the same: said, not undone
            _log.warning(f"{self.state_dir / DONE_NAME}: the id of a command carried out "
                         f"could not be kept ({exc.strerror or exc})")
            said = (f"done, but its id could not be kept (a replay may be carried out "
                    f"again): {exc.strerror or exc}")
            result = {**result, "warning": "; ".join(
                x for x in (result.get("warning"), said) if x)}
        return result

    def _maintenance(self, cmd: MaintenanceCommand, target: Target, via: str) -> dict:
        for_s = None if cmd.for_ is None else parse_duration(cmd.for_, "for")
        state = target.maintenance.set(cmd.state == "on", for_s, cmd.operator, via, cmd.id)
        if target.send is not None and not state.get("unchanged"):
            target.send(MaintenanceChanged(on=state["on"], until=state["until"],
                                           by=cmd.operator, via=via))
        return state

    def _feedback(self, cmd: _Command, target: Target, via: str) -> dict:
        from harken.agent.operator import feedback      # part A's; the CLI may never need it
        who = {"operator": cmd.operator, "via": via, "command_id": cmd.id}
        if isinstance(cmd, RecalibrateCommand):
            result = feedback.recalibrate(target.config, hours=cmd.hours,
                                          false_alarms_per_week=cmd.false_alarms_per_week,
                                          **who)
        elif cmd.undo:
            result = feedback.undo(target.config, **who)
        elif cmd.event is not None:
            result = feedback.mark_normal(target.config, event=cmd.event, **who)
        else:
            result = feedback.mark_normal(target.config, start=_epoch(cmd.from_),
                                          end=_epoch(cmd.to), **who)
        if target.pipeline is not None and target.bundle is not None:
            # the running machine scores with the new bank and threshold from its next
            # interval on (agent/pipeline.py swap: never half of the change)
            try:
                target.pipeline.swap(*feedback.live_state(target.config, target.bundle))
            except Exception as exc:           # noqa: BLE001 - done on disk; said, not hidden
                _log.exception(f"machine {target.config.agent.machine}: the change could not "
                               f"be taken up live")
                result = {**result, "warning": f"saved, but the running agent did not take "
                          f"it up ({type(exc).__name__}: {exc}); restart it"}
        return result

    def _refused(self, reply: dict, operator: str | None, via: str) -> None:
        command = reply["command"]
        action = command if command in MODELS else "command"
        try:
            audit.append_refused(self.state_dir, {
                "machine": reply["machine"], "action": action, "outcome": "refused",
                "reason": reply["reason"], "operator": operator, "via": via,
                "command_id": reply["id"]})
        except OSError as exc:                  # a full disk: the reply still says why
            _log.warning(f"the audit log could not take a refused command "
                         f"({exc.strerror or exc})")
