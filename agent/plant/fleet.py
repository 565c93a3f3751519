"""The fleet `harken watch` shows: the latest state of every agent (node, machine) heard
under the prefix, kept bounded whatever the broker sends.

Anyone allowed to publish under the prefix can send anything, retained, so that every start
gets it again. Every message goes through ``Fleet.handle``, which never raises: what it cannot
use (not UTF-8 where text is expected, JSON nested too deeply, numbers beyond a float, a ts or
score of 10^400, a payload over MAX_PAYLOAD, a name over MAX_NAME) is skipped and counted in
``malformed``, shown under the table. The fleet holds at most ``max_agents`` agents (the least
recently heard one is forgotten for a new one, counted) and forgets an agent not heard from for
``forget_after_s``; per agent it keeps only the fields the view shows, never a whole payload.

Sparkplug B: an edge node's NDEATH carries the ``bdSeq`` of the NBIRTH whose session it ends;
one whose ``bdSeq`` is not the current NBIRTH's is a stale death (the will of a connection
the node has already replaced) and leaves the node's devices as they are (Sparkplug B 3.0,
"bdSeq"; docs/mqtt.md). An NBIRTH or NDEATH without a ``bdSeq`` breaks the spec (it
"MUST" carry one): it is counted malformed and changes nothing, so that a bare NDEATH anyone
can publish does not mark a live node offline. A Sparkplug node is its group and edge node id
(two groups may each have an edge node ``n1``): a death ends the devices that node announced
in that group, never the JSON rows of a node of the same name, whose ``status`` topics are
each machine's own Last Will (docs/mqtt.md). So ``<prefix>/<node>/*/status`` is the status
of a machine named ``*``, nothing more.

A score stamped by an agent whose clock is not set (``"clock": "unsynced"``: a Raspberry Pi
without a real-time clock before NTP) has a ``ts`` that says nothing about when it was made:
its row's age is measured from its arrival at the watcher, and the view says "clock not set"
(docs/watch.md).

Maintenance (docs/mqtt.md "Commands"): the retained ``maintenance`` topic, a Sparkplug
DBIRTH's ``Maintenance`` metric and a DDATA of it mark the row as in maintenance (or not).
The operators' ``command`` and ``result`` topics say nothing about a machine's state and
are not read.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from harken.agent.plant.history import History
from harken.agent.sinks.mqtt.topics import STATE_KINDS, parse_topic

MAX_PAYLOAD = 256 * 1024        # bytes; a score is ~400, a stats record a few kB, a birth ~2 kB
MAX_NAME = 200                  # characters of a node or machine name kept as an identity
MAX_TEXT = 64                   # characters of a status or anomaly text kept per agent
DEFAULT_MAX_AGENTS = 1000
DEFAULT_FORGET_AFTER_S = 24 * 3600.0


class Unusable(ValueError):
    """A message the view cannot use (counted, never raised out of ``Fleet.handle``)."""


@dataclass
class Row:
    """One agent (node, machine) as the view shows it."""
    node: str
    machine: str
    score: float | None = None
    threshold: float | None = None
    anomaly: str = "-"
    seq: int | None = None
    last_seen: float = float("nan")   # ts of the latest score (retained state has none)
    audio: str = "-"                  # the latest interval's status: ok, silent, clipped, ...
    status: str | None = None         # online, stopped, offline, ... (None: none heard)
    lost: bool = False                # its stats record says the input is gone
    heard: float = 0.0                # arrival time of its latest message (for forgetting)
    clock_unsynced: bool = False      # its latest score or stats says "clock": "unsynced"
    maintenance: bool | None = None   # in maintenance (None: never said)
    model: str | None = None          # the latest score's model id and backend
    backend: str | None = None
    rms_dbfs: float | None = None     # the latest score's input level
    interval_s: float | None = None   # the agent's report interval, as its scores say
    score_heard: float = float("nan") # arrival time of its latest score (stale, whatever its ts)
    version: int = 0                  # Fleet.version when it last changed (the web view's deltas)
    history: History | None = None    # the last hour (only when the fleet keeps history)


def _text(payload: bytes) -> str:
    return payload.decode("utf-8", "replace")


def _json(payload: bytes):
    """The payload as JSON, or as text when it is not JSON; Unusable when it is JSON the
    parser cannot hold (nested too deeply, a number of thousands of digits)."""
    text = _text(payload)
    try:
        return json.loads(text)
    except RecursionError:
        raise Unusable("JSON nested too deeply") from None
    except ValueError as exc:
        if "digits" in str(exc):          # int of more than sys.get_int_max_str_digits()
            raise Unusable("a number too long") from None
        return text


def _real(body: dict, key: str) -> float | None:
    """``body[key]`` as a finite float, None when absent or null; Unusable otherwise (a
    string, a bool, 1e400 read as inf, an int of 10^400 that no float holds)."""
    x = body.get(key)
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise Unusable(f"{key} is not a number")
    try:
        value = float(x)
    except OverflowError:
        raise Unusable(f"{key} is beyond a float") from None
    if not math.isfinite(value):
        raise Unusable(f"{key} is not finite")
    return value


def _seq(body: dict) -> int | None:
    x = body.get("seq")
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 2 ** 63:
        raise Unusable("seq is not a counter")
    return x


def _score(body) -> dict:
    """The fields of a score payload the view reads, checked (docs/mqtt.md)."""
    if not isinstance(body, dict):
        raise Unusable("a score is not a JSON object")
    anomaly = body.get("anomaly")
    unsynced = body.get("clock") == "unsynced"
    return {"unsynced": unsynced, "score": _real(body, "score"), "threshold": _real(body, "threshold"),
            "ts": _real(body, "ts"), "seq": _seq(body),
            "anomaly": anomaly if isinstance(anomaly, bool) else None,
            "status": str(body.get("status", "-"))[:MAX_TEXT],
            "old": bool(body.get("replayed") is True or body.get("historical") is True),
            "model": _label(body, "model"), "backend": _label(body, "backend"),
            "rms_dbfs": _real(body, "rms_dbfs"), "interval_s": _real(body, "interval_s")}


def _label(body: dict, key: str) -> str | None:
    """A short text field (a model id, a backend): None when absent or not a string."""
    x = body.get(key)
    return x[:MAX_TEXT] if isinstance(x, str) else None


@dataclass
class Fleet:
    """Latest state, status and stats per agent: (node, machine). A Sparkplug device of a
    group other than ``sparkplug_group`` (only a prefix of ``spBv1.0`` brings one) is keyed
    and shown as (``group/edge node``, device), never merged with a node of the same name."""
    prefix: str
    sparkplug_group: str | None = "harken"
    max_agents: int = DEFAULT_MAX_AGENTS
    forget_after_s: float = DEFAULT_FORGET_AFTER_S
    history_s: float = 0.0            # keep each machine's scores this long (0: none)
    version: int = 0                  # counts changes: each changed row takes the new count
    # least recently heard first: the cap forgets from the front, so does pruning
    agents: OrderedDict[tuple[str, str], Row] = field(default_factory=OrderedDict)
    # (group, edge node): the bdSeq of its current NBIRTH
    births: OrderedDict[tuple[str, str], int] = field(default_factory=OrderedDict)
    malformed: int = 0                # messages skipped: not what docs/mqtt.md specifies
    forgotten: int = 0                # agents dropped for newer ones (max_agents)
    pruned: int = 0                   # agents dropped after forget_after_s of silence
    stale_deaths: int = 0             # Sparkplug NDEATHs of an earlier session, ignored
    # (group, edge node): the keys of the rows it announced (DBIRTH, DDEATH, DDATA)
    edges: dict[tuple[str, str], set] = field(default_factory=dict)

    # -- compatibility views -------------------------------------------------------------
    @property
    def rows(self) -> OrderedDict[tuple[str, str], Row]:
        return self.agents

    @property
    def status(self) -> dict[tuple[str, str], str]:
        return {k: r.status for k, r in self.agents.items() if r.status is not None}

    # -- messages ---------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes, now: float | None = None) -> dict | None:
        """Parse and apply one message; the record it was, or None when it is no Harken
        message or was unusable (counted in ``malformed``). Never raises."""
        try:
            record = self.parse(topic, payload)
            if record is not None and not self.update(record, now):
                return None
            return record
        except Exception:         # noqa: BLE001 - whatever a hostile payload finds: count it
            self.malformed += 1
            return None

    def parse(self, topic: str, payload: bytes) -> dict | None:
        """The message as a record, or None when the topic is not a Harken one or the
        message is unusable (counted)."""
        try:
            return self._parse(topic, payload)
        except (Unusable, RecursionError, ValueError, OverflowError, UnicodeError):
            self.malformed += 1
            return None

    def _parse(self, topic: str, payload: bytes) -> dict | None:
        if topic.startswith("spBv1.0/"):
            return self._parse_sparkplug(topic, payload)
        parsed = parse_topic(self.prefix, topic)
        if parsed is None or parsed.kind not in STATE_KINDS:
            return None
        if len(payload) > MAX_PAYLOAD:
            raise Unusable("payload too large")
        self._check_names(parsed.node, parsed.machine)
        return {"node": parsed.node, "machine": parsed.machine, "kind": parsed.kind,
                "payload": _json(payload)}

    @staticmethod
    def _check_names(node: str, machine: str | None) -> None:
        if len(node) > MAX_NAME or (machine is not None and len(machine) > MAX_NAME):
            raise Unusable("name too long")

    def _parse_sparkplug(self, name: str, payload: bytes) -> dict | None:
        """A Sparkplug message in the record form of the JSON topics: DDATA a score (with
        its anomaly state), DBIRTH/DDEATH the device's status, NBIRTH/NDEATH the node's
        (with the session's bdSeq)."""
        from harken.agent.sinks.sparkplug.payload import decode, metric_value, parse_topic as spb
        parsed = spb(name)
        if parsed is None:
            return None
        group, kind, node, device = parsed
        if kind not in ("NBIRTH", "NDEATH", "DBIRTH", "DDEATH", "DDATA"):
            return None
        if len(payload) > MAX_PAYLOAD:
            raise Unusable("payload too large")
        self._check_names(node, device)
        if kind in ("DBIRTH", "DDEATH"):
            if device is None:
                return None
            record = {"node": node, "machine": device, "kind": "status", "group": group,
                      "payload": "online" if kind == "DBIRTH" else "offline",
                      "profile": "sparkplug-b"}
            if kind == "DBIRTH":           # its Maintenance metric, where it has one
                try:
                    said = {m.name: metric_value(m) for m in decode(payload).metrics}
                except ValueError:
                    said = {}
                if isinstance(said.get("Maintenance"), bool):
                    record["maintenance"] = said["Maintenance"]
            return record
        if kind == "DDATA" and device is None:
            return None
        metrics = decode(payload).metrics
        values = {m.name: metric_value(m) for m in metrics}
        if "score" not in values and "interval_seq" not in values and \
                isinstance(values.get("Maintenance"), bool):
            # a change of Maintenance alone (agent/sinks/sparkplug/node.py)
            return {"node": node, "machine": device, "kind": "maintenance", "group": group,
                    "payload": {"state": "ON" if values["Maintenance"] else "OFF"},
                    "profile": "sparkplug-b"}
        if kind in ("NBIRTH", "NDEATH"):
            bdseq = values.get("bdSeq")
            if bdseq is None:                 # Sparkplug B 3.0: NBIRTH and NDEATH MUST carry it
                raise Unusable(f"{kind} without bdSeq")
            if isinstance(bdseq, bool) or not isinstance(bdseq, int):
                raise Unusable("bdSeq is not a number")
            return {"node": node, "machine": "*", "kind": "status", "group": group,
                    "payload": "online" if kind == "NBIRTH" else "offline", "bdSeq": bdseq,
                    "profile": "sparkplug-b"}
        stamp = next((m.timestamp for m in metrics if m.name == "score"), 0)
        body = {"ts": stamp / 1000, "seq": values.get("interval_seq"),
                "score": values.get("score"), "threshold": values.get("threshold"),
                "anomaly": values.get("anomaly"), "status": values.get("status"),
                "historical": any(m.is_historical for m in metrics)}
        if values.get("clock") == "unsynced":
            body["clock"] = "unsynced"
        _score(body)
        return {"node": node, "machine": device, "kind": "score", "payload": body,
                "group": group, "profile": "sparkplug-b"}

    def update(self, record: dict | None, now: float | None = None) -> bool:
        """Apply one parsed record; False when it was unusable (counted). A stale Sparkplug
        death is marked ``"stale": true`` and changes nothing."""
        if record is None:
            return False
        now = time.time() if now is None else now
        node, machine, kind, body = record["node"], record["machine"], record["kind"], \
            record["payload"]
        sparkplug = record.get("profile") == "sparkplug-b"
        edge = (str(record.get("group")), node) if sparkplug else None
        if edge is not None and machine == "*":    # a Sparkplug edge node's birth or death
            if not self._node_status(edge, body, record["bdSeq"], now):
                record["stale"] = True         # shown by --json as such, applied to nothing
            return True
        if kind == "score":
            try:
                score = _score(body)
            except Unusable:
                # anyone allowed to publish under the prefix could send this: skip and count
                # it, never let it stop the view (a retained one would stop it at every start)
                self.malformed += 1
                return False
        shown = node if edge is None or edge[0] == self.sparkplug_group else f"{edge[0]}/{node}"
        row = self._row(shown, machine, now)
        if edge is not None:
            self.edges.setdefault(edge, set()).add((shown, machine))
        if isinstance(record.get("maintenance"), bool):
            row.maintenance = record["maintenance"]
        if kind == "status":
            row.status = (body if isinstance(body, str) else json.dumps(body))[:MAX_TEXT]
        elif kind == "maintenance":   # {"state": "ON"|"OFF", ...}: anything else says nothing
            state = body.get("state") if isinstance(body, dict) else None
            if state in ("ON", "OFF"):
                row.maintenance = state == "ON"
        elif kind == "stats":
            row.lost = isinstance(body, dict) and body.get("audio") == "lost"
            if isinstance(body, dict) and body.get("clock") in ("synced", "unsynced"):
                row.clock_unsynced = body["clock"] == "unsynced"
        elif kind == "score":
            # an unset clock's ts says nothing about when (docs/watch.md): arrival time
            ts = None if score["unsynced"] else score["ts"]
            if self.history_s > 0:     # a late score still belongs in its place on the chart
                if row.history is None:
                    row.history = History(self.history_s)
                row.history.add(now if ts is None else ts, score["score"], score["threshold"],
                                score["anomaly"] is True,
                                isinstance(body, dict) and body.get("maintenance") is True, now)
            if score["old"] and (row.score is not None if ts is None else ts < row.last_seen):
                return True       # history delivered late: the row keeps the newer score
            # a queued score is as old as its timestamp, not its arrival
            row.last_seen = ts if ts is not None else now
            row.score_heard = now
            row.clock_unsynced = score["unsynced"]
            row.score, row.threshold, row.seq = score["score"], score["threshold"], score["seq"]
            row.audio = score["status"]
            for key in ("model", "backend", "rms_dbfs", "interval_s"):
                setattr(row, key, score[key])
            # JSON: the anomaly topic carries the state; Sparkplug: every DDATA does
            if (row.anomaly == "-" or record.get("profile") == "sparkplug-b") \
                    and score["anomaly"] is not None:
                row.anomaly = "ON" if score["anomaly"] else "OFF"
        elif kind == "anomaly":       # {"state": "ON", ...}; earlier agents sent a bare ON/OFF
            state = body.get("state", "?") if isinstance(body, dict) else body
            row.anomaly = (state if isinstance(state, str) else json.dumps(state))[:MAX_TEXT]
        return True

    def _node_status(self, edge: tuple[str, str], status: str, bdseq: int, now: float) -> bool:
        if status == "online":
            self.births[edge] = bdseq
            self.births.move_to_end(edge)
            while len(self.births) > self.max_agents:
                self.births.popitem(last=False)
            return True
        if self.births.get(edge, bdseq) != bdseq:
            self.stale_deaths += 1            # the will of a session already replaced
            return False
        self.births.pop(edge, None)
        for key in list(self.edges.get(edge, ())):
            row = self.agents[key]
            row.status, row.heard = status, now
            self._touch(row)
            self.agents.move_to_end(key)
        return True

    def _row(self, node: str, machine: str, now: float) -> Row:
        key = (node, machine)
        row = self.agents.get(key)
        if row is None:
            while len(self.agents) >= self.max_agents:
                self._drop(*self.agents.popitem(last=False))
                self.forgotten += 1
            row = self.agents[key] = Row(node, machine)
        else:
            self.agents.move_to_end(key)
        row.heard = now
        self._touch(row)
        return row

    def _touch(self, row: Row) -> None:
        self.version += 1
        row.version = self.version

    def _drop(self, key: tuple[str, str], row: Row) -> None:
        # the one edge node that can have announced it: a foreign group's row is "group/node"
        group, _, node = key[0].rpartition("/")
        edge = (group, node) if group else (str(self.sparkplug_group), node)
        machines = self.edges.get(edge)
        if machines is not None:
            machines.discard(key)
            if not machines:
                del self.edges[edge]

    def prune(self, now: float | None = None) -> int:
        """Forget the agents not heard from for ``forget_after_s``; how many went."""
        now = time.time() if now is None else now
        gone = 0
        while self.agents and self.forget_after_s > 0:
            key, row = next(iter(self.agents.items()))
            if now - row.heard <= self.forget_after_s:
                break
            self._drop(*self.agents.popitem(last=False))
            gone += 1
        self.pruned += gone
        return gone

    def table(self, now: float | None = None, max_rows: int | None = None, banner=None):
        from harken.agent.plant.view import table
        return table(self, now, max_rows=max_rows, banner=banner)
