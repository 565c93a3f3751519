"""`harken watch` against a real broker: a persistent session delivers what was published
while it was away, as JSON lines or as a table; bad URLs and credentials are clear errors."""

import json
import subprocess
import sys

from harken.agent.sinks.mqtt.broker import BrokerError, parse_broker_url
from harken.testkit.mosquitto import PASSWORD, agent_config, run_agent


def watch(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "harken.agent.cli", "watch", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_broker_urls():
    u = parse_broker_url("mqtts://op%40plant:pw@broker.local")
    assert (u.host, u.port, u.tls, u.username, u.password) == \
        ("broker.local", 8883, True, "op@plant", "pw")
    assert parse_broker_url("10.0.0.5:1884").port == 1884
    for bad, why in [("http://x", "scheme 'http'"), ("mqtt://x:99999", "port"),
                     ("mqtt://:1883", "no host")]:
        try:
            parse_broker_url(bad)
        except BrokerError as exc:
            assert why in str(exc)
        else:
            raise AssertionError(bad)


def test_watch_gets_what_was_published_while_it_was_away(broker, ae_bundle, wav, tmp_path):
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    url = f"mqtt://harken@127.0.0.1:{broker.port}"
    common = ["--broker", url, "--password-file", str(tmp_path / "pw"), "--client-id", "plant"]
    first = watch(*common, "--json", "--for", "1")       # opens the persistent session
    assert first.returncode == 0, first.stderr
    assert first.stdout == ""
    out = run_agent(agent_config(tmp_path, ae_bundle, broker.port, wav))
    assert out.returncode == 0, out.stderr
    second = watch(*common, "--json", "--for", "3")
    assert second.returncode == 0, second.stderr
    lines = [json.loads(x) for x in second.stdout.splitlines()]
    scores = [x for x in lines if x["kind"] == "score"]
    assert [x["payload"]["seq"] for x in scores] == [1, 2, 3, 4, 5]
    assert all(x["node"] == "n1" and x["machine"] == "fan" for x in scores)
    assert {"received", "topic", "retained"} <= set(scores[0])
    assert any(x["kind"] == "status" and x["payload"] == "stopped" for x in lines)

    table = watch("--broker", url, "--password-file", str(tmp_path / "pw"), "--for", "2")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if " n1 " in line)
    assert "fan" in row and "ON" in row and "stopped" in row
    assert PASSWORD not in table.stdout + table.stderr


def test_watch_errors_are_one_clear_line(broker, tmp_path):
    (tmp_path / "pw").write_text("wrong\n")
    bad_pw = watch("--broker", f"mqtt://harken@127.0.0.1:{broker.port}", "--password-file",
                   str(tmp_path / "pw"), "--for", "1")
    assert bad_pw.returncode == 2
    assert "refused the connection: Not authorized (check the user name and password)" in \
        bad_pw.stderr
    assert "wrong" not in bad_pw.stderr
    down = watch("--broker", "mqtt://127.0.0.1:1", "--for", "1")
    assert down.returncode == 2 and "cannot reach broker 127.0.0.1:1" in down.stderr
    url = watch("--broker", "ftp://x", "--for", "1")
    assert url.returncode == 2 and "scheme 'ftp'" in url.stderr
    for r in (bad_pw, down, url):
        assert "Traceback" not in r.stderr


def test_the_fleet_table_keeps_the_latest_state_per_machine():
    from harken.agent.plant.watch import Fleet
    fleet = Fleet("harken")
    assert fleet.parse("other/n1/fan/status", b"online") is None
    for topic, payload in [("harken/n1/fan/status", b"online"),
                           ("harken/n1/fan/score", b'{"ts": 100.0, "seq": 3, "score": 1.5, '
                                                   b'"threshold": 2.0, "anomaly": false}'),
                           ("harken/n1/fan/anomaly", b'{"state": "ON", "seq": 3, "ts": 100.0}'),
                           ("harken/n1/pump/anomaly", b"OFF"),      # an earlier agent's form
                           ("harken/n2/fan/status", b"offline"),
                           # one node, several machines: each its own row and audio state
                           ("harken/n3/pump-1/score", b'{"ts": 120.0, "seq": 1, "score": null, '
                                                      b'"threshold": 2.0, "anomaly": false, '
                                                      b'"status": "silent"}'),
                           ("harken/n3/pump-2/score", b'{"ts": 120.0, "seq": 1, "score": 1.0, '
                                                      b'"threshold": 2.0, "anomaly": false, '
                                                      b'"status": "ok"}'),
                           ("harken/n3/pump-3/stats", b'{"audio": "lost"}')]:
        fleet.update(fleet.parse(topic, payload), now=130.0)
    row = fleet.rows[("n1", "fan")]
    assert (row.score, row.threshold, row.seq, row.anomaly) == (1.5, 2.0, 3, "ON")
    assert fleet.rows[("n1", "pump")].anomaly == "OFF"
    assert row.last_seen == 100.0                      # the score's own time, not arrival
    assert fleet.status == {("n1", "fan"): "online", ("n2", "fan"): "offline"}
    assert (fleet.rows[("n3", "pump-1")].audio, fleet.rows[("n3", "pump-2")].audio) == \
        ("silent", "ok")
    from rich.console import Console
    console = Console(width=120, record=True)
    console.print(fleet.table(now=130.0))
    text = console.export_text()
    assert "30 s ago" in text and "offline" in text
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines()
             if "│" in line]
    audio = {row[1]: row[5] for row in cells if row[0] == "n3"}
    assert audio == {"pump-1": "silent", "pump-2": "ok", "pump-3": "lost"}


def test_a_broker_url_error_never_echoes_the_password():
    for bad in ("mqtt://op:s3cr3t-pw@host:99999", "http://op:s3cr3t-pw@host"):
        try:
            parse_broker_url(bad)
        except BrokerError as exc:
            assert "s3cr3t-pw" not in str(exc) and "op:***@host" in str(exc)
        else:
            raise AssertionError(bad)


def test_malformed_score_messages_are_skipped_and_counted_not_fatal():
    """A retained score whose fields have the wrong types (published by anyone allowed
    under the prefix) must not stop the plant's view."""
    import io

    from rich.console import Console

    from harken.agent.plant.watch import Fleet
    fleet = Fleet("harken")
    good = b'{"ts": 1.0, "seq": 3, "score": 1.5, "threshold": 2.0, "anomaly": false}'
    for payload in (b'{"score": "high"}', b'{"score": [1, 2]}', b'{"score": {"a": 1}}',
                    b'{"score": 1.0, "seq": "7"}', b'{"score": true}', b'"just text"', good):
        fleet.update(fleet.parse("harken/n1/fan/score", payload), now=2.0)
    assert fleet.malformed == 6
    row = fleet.rows[("n1", "fan")]
    assert (row.score, row.seq, row.anomaly) == (1.5, 3, "OFF")
    text = io.StringIO()
    Console(file=text, width=120).print(fleet.table(now=3.0))
    assert "6 malformed message(s) skipped" in text.getvalue() and "1.5" in text.getvalue()


def test_every_broker_url_that_names_no_broker_is_one_line_and_exit_2(capsys):
    """A URL urllib cannot split (an unclosed IPv6 bracket, raised ValueError), a host name
    the IDNA codec refuses at connect (a 300-character label, raised UnicodeError), a port
    out of range or 0, an empty host, an unknown scheme, a path, a space in the host: each
    one line naming --broker or the URL and what was expected, exit 2, never a traceback, the
    password never echoed. A user without a password is no URL error (the password may come
    from --password-file)."""
    from harken.agent.cli import main
    from harken.agent.plant.watch import watch_url
    cases = [("mqtt://[::1", "Invalid IPv6 URL"), ("mqtts://u:secret@[::1", "Invalid IPv6"),
             ("mqtt://[zz]:1883", "IPv6"),
             ("mqtt://" + "a" * 300, "not a host name"),
             ("mqtt://" + "a" * 63 + "." + "b" * 64 + ".com", "labels of 1 to 63"),
             ("mqtt://" + ".".join(["abcdefgh"] * 30), "at most 253"),
             ("mqtt://a..b", "not a host name"), ("mqtt://ho st", "' '"),
             ("mqtt://host:99999", "1 to 65535"), ("mqtt://host:0", "1 to 65535"),
             ("mqtt://[::1]:0", "1 to 65535"), ("mqtt://u:secret@host:-1", "1 to 65535"),
             ("mqtt://host:abc", "1 to 65535"), ("mqtt://", "no host"), ("mqtt://:1883", "no host"),
             ("mqtt://u:secret@", "no host"), ("http://host", "scheme 'http'"),
             ("mqtt://host/plant", "no path")]
    for url, why in cases:
        rc = main(["watch", "--broker", url, "--for", "1"])
        err = capsys.readouterr().err
        assert rc == 2, (url, err)
        assert len(err.strip().splitlines()) == 1 and why in err, (url, err)
        assert "Traceback" not in err and "secret" not in err, (url, err)
    for fine in ("mqtt://user@broker.plant", "mqtt://[::1]:1883", "bücher.example:1884",
                 "mqtt://10.0.0.5"):
        assert watch_url(fine).host
