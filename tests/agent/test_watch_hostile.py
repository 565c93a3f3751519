"""`harken watch` against what a hostile (or merely careless) publisher can put on the broker:
retained messages that break parsers, escape sequences aimed at the operator's terminal, a
flood of topics, a second watcher, a stale Sparkplug death. The fleet model is fed directly
where the broker adds nothing; the rest runs against a real Mosquitto
(docs/reliability.md "The plant view")."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from harken.agent.plant.watch import Fleet
from harken.agent.sinks.sparkplug.payload import DataType, Payload, add_metric

GOOD = b'{"ts": 100.0, "seq": 3, "score": 1.5, "threshold": 2.0, "anomaly": false}'
# what an attacker writes to the operator's terminal: retitle, clear, blink, colour,
# carriage return, bell, a C1 CSI, a bidi override
ESCAPES = ["\x1b]0;PWNED\x07", "\x1b[2J", "\x1b[5mBLINK", "\x1b[31mRED", "over\rwrite", "\x07",
           "\x9b2J", "\u202egnp.exe"]


def feed(fleet: Fleet, topic: str, payload: bytes, now: float = 130.0):
    """What the old and the new fleet both have: parse, then update."""
    fleet.update(fleet.parse(topic, payload), now=now)


def rendered(fleet: Fleet, width: int = 160, now: float = 130.0, **kw) -> str:
    """What the table writes to a colour terminal."""
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=True, color_system="truecolor").print(
        fleet.table(now=now, **kw))
    return out.getvalue()


def spb(*metrics, seq: int = 0) -> bytes:
    p = Payload(timestamp=100_000, seq=seq)
    for name, dtype, value in metrics:
        add_metric(p, name, dtype, value, 100_000)
    return p.SerializeToString()


def test_payloads_that_break_parsers_are_counted_and_never_raise():
    """A retained message nested 100 000 deep, a ts, score or threshold of 10^400 (as an
    integer and as 1e400), non-UTF-8, a payload over the size limit: each skipped and counted;
    the good message after them is shown and the table renders."""
    fleet = Fleet("harken")
    big = 10 ** 400
    hostile = [b"[" * 100_000 + b"]" * 100_000,
               b'{"score": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
               json.dumps({"ts": big, "score": 1.0, "threshold": 2.0}).encode(),
               json.dumps({"ts": 1.0, "score": big, "threshold": 2.0}).encode(),
               json.dumps({"ts": 1.0, "score": 1.0, "threshold": big}).encode(),
               b'{"ts": 1e400, "score": 1.0, "threshold": 2.0}',
               b'{"ts": 1.0, "score": NaN, "threshold": 2.0}',
               b'{"ts": 1.0, "score": 1' + b"0" * 5000 + b', "threshold": 2.0}',
               b'\xff\xfe{"score": \x80}',
               b'{"ts": 1.0, "score": 1.0, "pad": "' + b"x" * 300_000 + b'"}']
    for payload in hostile:
        feed(fleet, "harken/n1/fan/score", payload)
    for kind in ("stats", "status", "anomaly"):
        feed(fleet, f"harken/n1/fan/{kind}", b"[" * 100_000)
    assert fleet.malformed == len(hostile) + 3
    feed(fleet, "harken/n1/fan/score", GOOD)
    row = fleet.rows[("n1", "fan")]
    assert (row.score, row.threshold, row.seq) == (1.5, 2.0, 3)
    text = rendered(fleet)
    assert f"{len(hostile) + 3} malformed message(s) skipped" in text and "1.5" in text


def test_sparkplug_payloads_that_are_no_sparkplug_are_counted():
    fleet = Fleet("harken")
    for topic, payload in [("spBv1.0/harken/DDATA/n1/fan", b"\xff" * 50),
                           ("spBv1.0/harken/DDATA/n1/fan", b"\x12" * 100_000),
                           ("spBv1.0/harken/NDEATH/n1", spb(("bdSeq", DataType.String, "x"))),
                           ("spBv1.0/harken/DDATA/n1/fan",
                            spb(("score", DataType.String, "[/bold]")))]:
        feed(fleet, topic, payload)
    assert fleet.malformed == 4 and not fleet.agents


def test_markup_and_escape_sequences_from_the_broker_never_reach_the_terminal():
    """Statuses, anomaly states, node and machine names carrying rich markup or terminal
    escape sequences are shown as visible text: no ESC, CSI, BEL or CR from the broker gets
    through, and ``[/bold]`` no longer crashes the table."""
    fleet = Fleet("harken")
    for i, bad in enumerate(ESCAPES + ["[/bold]", "[bold red]x[/]", "[link=http://x]y[/link]"]):
        name = bad.replace("/", "")              # a topic level holds no "/"
        node, machine = f"n{i}{name}", f"fan{name}"
        feed(fleet, f"harken/{node}/{machine}/status", bad.encode())
        feed(fleet, f"harken/{node}/{machine}/anomaly", json.dumps({"state": bad}).encode())
        feed(fleet, f"harken/{node}/{machine}/score",
             json.dumps({"ts": 1.0, "score": 1.0, "threshold": 2.0, "status": bad}).encode())
    text = rendered(fleet, width=400)
    # rich's own styling is "ESC[...m"; the broker's sequences must not appear in any form
    for seq in ("\x1b]", "\x1b[2J", "\x1b[5m", "\x1b[31m", "\x07", "\r", "\x9b", "\u202e"):
        assert seq not in text, repr(seq)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "\x1b" not in plain
    assert "?]0;PWNED?" in plain and "?[2J" in plain and "[/bold]" in plain
    assert "n9[bold red]x[]" in plain and "[link=http:x]y[link]" in plain


def test_the_fleet_is_bounded_and_silent_machines_are_forgotten():
    """3000 agents into a fleet of at most 100: the least recently heard go first, each
    counted; agents silent for longer than forget_after_s are pruned; the table builds only
    the rows asked for, anomalies first."""
    fleet = Fleet("harken", max_agents=100, forget_after_s=600)
    for i in range(3000):
        feed(fleet, f"harken/n{i}/fan/score", GOOD, now=1000.0 + i)
    feed(fleet, "harken/n2999/fan/anomaly", b'{"state": "ON"}', now=4000.0)
    assert len(fleet.agents) == 100 and fleet.forgotten == 2900
    assert ("n0", "fan") not in fleet.agents and ("n2999", "fan") in fleet.agents
    assert not fleet.edges           # JSON rows: no Sparkplug edge node indexes them
    text = rendered(fleet, max_rows=10, now=4000.0)
    assert "showing 10 of 100 machines" in text and "2900 machine(s) forgotten" in text
    first = next(line for line in text.splitlines() if " n" in line and "│" in line)
    assert "n2999" in first                       # the anomaly is on screen
    assert fleet.prune(now=1000.0 + 2950 + 600) == 50
    assert len(fleet.agents) == 50 and fleet.pruned == 50


def test_a_stale_ndeath_does_not_mark_a_live_node_offline():
    """Sparkplug: the NDEATH of an earlier session (the will of a connection the node has
    replaced; its bdSeq is older) leaves the devices online; the current session's NDEATH
    marks them offline."""
    fleet = Fleet("harken")
    feed(fleet, "spBv1.0/harken/NBIRTH/n1", spb(("bdSeq", DataType.Int64, 5)))
    feed(fleet, "spBv1.0/harken/DBIRTH/n1/fan", spb(("score", DataType.Float, 1.0)))
    feed(fleet, "spBv1.0/harken/NDEATH/n1", spb(("bdSeq", DataType.Int64, 4)))
    assert fleet.status[("n1", "fan")] == "online" and fleet.stale_deaths == 1
    stale = fleet.handle("spBv1.0/harken/NDEATH/n1", spb(("bdSeq", DataType.Int64, 3)))
    assert stale["stale"] is True and fleet.status[("n1", "fan")] == "online"  # --json shows it
    assert "2 stale Sparkplug death(s) ignored" in rendered(fleet)
    feed(fleet, "spBv1.0/harken/NDEATH/n1", spb(("bdSeq", DataType.Int64, 5)))
    assert fleet.status[("n1", "fan")] == "offline"


def test_a_node_flapping_birth_and_death_stays_one_row():
    fleet = Fleet("harken")
    feed(fleet, "spBv1.0/harken/DBIRTH/n1/fan", spb(("score", DataType.Float, 1.0)))
    for i in range(1000):
        feed(fleet, "spBv1.0/harken/NBIRTH/n1", spb(("bdSeq", DataType.Int64, i % 256)))
        feed(fleet, "spBv1.0/harken/DBIRTH/n1/fan", spb(("score", DataType.Float, 1.0)))
        feed(fleet, "spBv1.0/harken/NDEATH/n1", spb(("bdSeq", DataType.Int64, i % 256)))
    assert list(fleet.agents) == [("n1", "fan")] and fleet.status[("n1", "fan")] == "offline"
    assert fleet.stale_deaths == 0 and len(fleet.births) == 0


def test_history_delivered_late_does_not_replace_the_latest_score():
    """A replayed score older than the one shown stays history; a live one whose seq goes
    backwards (an agent restarted on an empty state) is shown as it came."""
    fleet = Fleet("harken")
    feed(fleet, "harken/n1/fan/score", b'{"ts": 200.0, "seq": 9, "score": 2.0}')
    feed(fleet, "harken/n1/fan/score", b'{"ts": 150.0, "seq": 5, "score": 1.0, "replayed": true}')
    assert fleet.rows[("n1", "fan")].seq == 9
    feed(fleet, "harken/n1/fan/score", b'{"ts": 210.0, "seq": 1, "score": 3.0}')
    assert (fleet.rows[("n1", "fan")].seq, fleet.rows[("n1", "fan")].score) == (1, 3.0)


def test_long_names_are_refused_and_odd_ones_kept_apart():
    """A 10 kB node name is skipped and counted (it would be kept as an identity per
    agent); two names that differ after the part shown stay two rows."""
    fleet = Fleet("harken")
    feed(fleet, f"harken/{'n' * 10_000}/fan/status", b"online")
    assert fleet.malformed == 1 and not fleet.agents
    feed(fleet, f"harken/{'a' * 100}1/fan/status", b"online")
    feed(fleet, f"harken/{'a' * 100}2/fan/status", b"online")
    assert len(fleet.agents) == 2 and "…" in rendered(fleet)


def test_home_assistant_discovery_is_not_read_by_watch():
    """watch subscribes to the prefix and Sparkplug only: a discovery config announced again
    and again (Home Assistant restarting) costs it nothing."""
    fleet = Fleet("harken")
    for _ in range(100):
        assert fleet.handle("homeassistant/device/harken_n1_fan/config", b"{}") is None
    assert fleet.malformed == 0 and not fleet.agents


def test_a_narrow_terminal_renders():
    fleet = Fleet("harken")
    feed(fleet, "harken/n1/fan/score", GOOD)
    feed(fleet, "harken/n1/fan/status", b"\x1b[2Jonline")
    text = rendered(fleet, width=20)
    assert "\x1b[2J" not in text and text.strip()


@pytest.mark.parametrize("args, expected", [
    (["--broker", "mqtt://127.0.0.1/plant"], "a broker URL has no path"),
    (["--broker", "127.0.0.1", "--prefix", "a+b"], "argument --prefix: 'a+b': character '+'"),
    (["--broker", "127.0.0.1", "--client-id", "x\ny"], "argument --client-id: 'x\\ny': control"),
    (["--broker", "127.0.0.1", "--max-machines", "0"], "--max-machines 0: expected"),
    (["--broker", "127.0.0.1", "--forget-after", "nan"], "--forget-after nan: expected"),
    (["--broker", "127.0.0.1", "--for", "nan"], "argument --for: 'nan': expected above 0"),
])
def test_option_values_out_of_range_are_one_line(args, expected, capsys):
    from harken.agent.cli import main
    assert main(["watch", *args]) == 2
    err = capsys.readouterr().err
    # the last line names the option (argparse's refusals print the usage before it)
    assert expected in err.strip().splitlines()[-1] and "Traceback" not in err


def test_client_ids_are_stable_per_watcher_and_differ_between_watchers(monkeypatch):
    from harken.agent.plant.watch import default_client_id
    a, b = default_client_id("pump-hall"), default_client_id("office")
    assert a == default_client_id("pump-hall") and a[1] and a[0] != b[0]
    assert len(default_client_id("x" * 500)[0]) <= 64
    assert default_client_id("x" * 500) != default_client_id("x" * 499)
    # not on a terminal and no name: this process's own id, a session that ends with it
    monkeypatch.setattr("sys.stdin", io.StringIO())
    monkeypatch.setattr("sys.stdout", io.StringIO())
    monkeypatch.setattr("sys.stderr", io.StringIO())
    cid, persistent = default_client_id(None)
    assert not persistent and cid.endswith(f"-pid{__import__('os').getpid()}")


def test_the_connection_state_is_shown_under_the_title():
    """What watch.py's Connection reports (a disconnect, a refused subscription) is a banner
    under the title of the live table, made safe like everything else."""
    fleet = Fleet("harken")
    feed(fleet, "harken/n1/fan/score", GOOD)
    text = rendered(fleet, banner=[("10:00:00 disconnected from b:1883 (Unspecified error); "
                                    "reconnecting", "bold red"),
                                   ("refused the subscription to spBv1.0/harken/# \x1b[2J",
                                    "bold yellow")])
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "disconnected from b:1883" in plain and "spBv1.0/harken/# ?[2J" in plain


def test_a_death_ends_only_the_node_that_announced_the_rows():
    """A Sparkplug node is its group and edge node id: an NDEATH of group ``other`` leaves
    group ``harken``'s n1 online (and other's devices are rows of their own, ``other/n1``); an
    NDEATH without bdSeq is malformed and ignored; the current session's NDEATH ends the
    devices n1 announced, not the JSON agent n1/pump, whose status is its own Last Will; a
    ``harken/n1/*/status`` is the status of a machine named ``*`` only."""
    fleet = Fleet("harken")
    feed(fleet, "spBv1.0/harken/NBIRTH/n1", spb(("bdSeq", DataType.Int64, 1)))
    feed(fleet, "spBv1.0/harken/DBIRTH/n1/fan", spb(("score", DataType.Float, 1.0)))
    feed(fleet, "harken/n1/pump/status", b"online")
    feed(fleet, "spBv1.0/other/NBIRTH/n1", spb(("bdSeq", DataType.Int64, 7)))
    feed(fleet, "spBv1.0/other/DBIRTH/n1/fan", spb(("score", DataType.Float, 1.0)))
    feed(fleet, "spBv1.0/other/NDEATH/n1", spb(("bdSeq", DataType.Int64, 7)))
    assert fleet.status == {("n1", "fan"): "online", ("n1", "pump"): "online",
                            ("other/n1", "fan"): "offline"}
    assert fleet.handle("spBv1.0/harken/NDEATH/n1", spb(("score", DataType.Float, 1.0))) is None
    assert fleet.malformed == 1 and fleet.status[("n1", "fan")] == "online"
    feed(fleet, "harken/n1/*/status", b"offline")
    assert fleet.status[("n1", "fan")] == "online" and fleet.status[("n1", "*")] == "offline"
    feed(fleet, "spBv1.0/harken/NDEATH/n1", spb(("bdSeq", DataType.Int64, 1)))
    assert fleet.status[("n1", "fan")] == "offline" and fleet.status[("n1", "pump")] == "online"
    for i in range(300):                     # a flood of edge nodes: the index stays bounded
        feed(fleet, f"spBv1.0/harken/DDATA/e{i}/fan", spb(("score", DataType.Float, 1.0)))
    small = Fleet("harken", max_agents=50)
    for i in range(300):
        feed(small, f"spBv1.0/harken/DDATA/e{i}/fan", spb(("score", DataType.Float, 1.0)))
    assert len(small.agents) == 50 and sum(len(v) for v in small.edges.values()) == 50


def test_an_unset_clock_is_aged_by_arrival_and_said():
    """``"clock": "unsynced"``: the row's age is its arrival, the table says "clock not
    set"; a replayed score of such an agent never replaces the one shown; a synchronised
    score clears it; a stats record's ``clock`` and a Sparkplug metric ``clock`` set it."""
    fleet = Fleet("harken")
    feed(fleet, "harken/pi/fan/score", b'{"ts": 10.0, "seq": 5, "score": 1.0, "clock": "unsynced"}',
         now=5000.0)
    row = fleet.rows[("pi", "fan")]
    assert row.last_seen == 5000.0 and row.clock_unsynced
    text = rendered(fleet, now=5003.0)
    assert "3 s ago, clock not set" in text and " d ago" not in text
    feed(fleet, "harken/pi/fan/score",
         b'{"ts": 99999.0, "seq": 2, "score": 9.0, "replayed": true, "clock": "unsynced"}')
    assert row.seq == 5
    feed(fleet, "harken/pi/fan/score", b'{"ts": 4990.0, "seq": 6, "score": 1.0}', now=5010.0)
    assert row.last_seen == 4990.0 and not row.clock_unsynced
    feed(fleet, "harken/pi/fan/stats", b'{"clock": "unsynced"}')
    assert row.clock_unsynced
    feed(fleet, "spBv1.0/harken/DDATA/sp/fan", spb(("score", DataType.Float, 1.0),
                                                    ("clock", DataType.String, "unsynced")),
         now=7000.0)
    assert fleet.rows[("sp", "fan")].clock_unsynced and fleet.rows[("sp", "fan")].last_seen == 7000
