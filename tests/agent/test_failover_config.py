"""``mqtt.brokers`` (docs/mqtt.md "Several brokers: failover"): every list that cannot serve
as one cluster is refused in one line naming the key (and the index of a bad URL), a
password in a URL is never echoed, and ``endpoints()`` is what every connection uses."""

import re

import pytest

from harken.agent.config import ConfigError, load_config

GOOD = """
[agent]
node = "n1"
machine = "fan"
[model]
bundle = "b"
[audio]
source = "file"
file = "x.wav"
[mqtt]
enabled = true
"""


def load(tmp_path, mqtt: str):
    p = tmp_path / "agent.toml"
    p.write_text(GOOD + mqtt + "\n")
    return load_config(p)


@pytest.mark.parametrize("mqtt, says", [
    ("brokers = []", r"mqtt\.brokers is an empty list"),
    ('brokers = ["mqtt://a", "mqtt://A:1883"]',
     r"mqtt\.brokers\[1\] names the same broker as mqtt\.brokers\[0\] \(a:1883"),
    ('brokers = ["mqtts://a:8883", "mqtts://a"]', r"mqtt\.brokers\[1\] names the same broker"),
    ('brokers = ["mqtt://a", "mqtts://b"]', r"mqtt\.brokers mixes mqtt:// and mqtts://"),
    ('brokers = ["mqtt://op:s3cret@a"]', r"mqtt\.brokers\[0\]: credentials in a broker URL"),
    ('brokers = ["mqtt://a"]\nhost = "b"', r"mqtt\.brokers and mqtt\.host are both set"),
    ('brokers = ["mqtt://a"]\nport = 1884', r"mqtt\.brokers and mqtt\.port are both set"),
    ('brokers = ["mqtts://a"]\ntls = false', r"mqtt\.brokers has mqtts:// \(TLS\) URLs but "
                                             r"mqtt\.tls = false"),
    ('brokers = ["mqtt://a", "mqtt://b", "ftp://c"]', r"mqtt\.brokers\[2\]: .*scheme 'ftp'"),
    ('brokers = ["mqtt://a:0"]', r"mqtt\.brokers\[0\]: .*port must be a number"),
    ('brokers = ["mqtt://a b"]', r"mqtt\.brokers\[0\]: .*has ' ' in it"),
    ('brokers = ["mqtt://a/plant"]', r"mqtt\.brokers\[0\]: .*a broker URL has no path"),
    # hostile findings (docs/reliability.md): one set of URL rules with harken watch
    ('brokers = ["mqtt://a", "mqtt://a\\tb"]', r"mqtt\.brokers\[1\]: .*has '\\t' in it"),
    ('brokers = ["mqtt://a\\n"]', r"mqtt\.brokers\[0\]: .*has '\\n' in it"),
    ('brokers = ["mqtt://a:"]', r"mqtt\.brokers\[0\]: .*port must be a number"),
    ('brokers = ["mqtt://a//"]', r"mqtt\.brokers\[0\]: .*no path"),
    ('brokers = ["mqtt://a?x"]', r"mqtt\.brokers\[0\]: .*no path, query or fragment"),
    ('brokers = ["mqtt://a#f"]', r"mqtt\.brokers\[0\]: .*no path, query or fragment"),
    ('brokers = ["mqtt://b", "mqtt://[::1"]', r"mqtt\.brokers\[1\]: .*Invalid IPv6 URL .*in "
                                              r"brackets: mqtt://\[::1\]:1883"),
    ('brokers = ["mqtt://::1"]', r"mqtt\.brokers\[0\]: .*an IPv6 address goes in brackets"),
    ('brokers = ["mqtt://[::1]", "mqtt://[0:0:0:0:0:0:0:1]:1883"]',
     r"mqtt\.brokers\[1\] names the same broker as mqtt\.brokers\[0\] \(\[::1\]:1883"),
    ('brokers = ["mqtt://a.example.", "mqtt://A.example"]',
     r"mqtt\.brokers\[1\] names the same broker as mqtt\.brokers\[0\]"),
    ('brokers = ["mqtt://a", "mqtt://b"]\ntls = true', r"mqtt\.tls = true but mqtt\.brokers has "
                                                      r"mqtt:// \(plain\) URLs: write mqtts://"),
    ('brokers = ["mqtt://a"]\nca_file = "ca.pem"', r"mqtt\.ca_file set but mqtt\.brokers has "
                                                   r"mqtt:// \(plain\) URLs"),
    # FINDINGS2 6 and 8: credentials with '/' are still credentials; two URLs in one item
    ('brokers = ["mqtt://op:s3cret/x@a"]', r"mqtt\.brokers\[0\]: credentials in a broker URL"),
    ('brokers = ["mqtt://a,mqtt://b"]', r"mqtt\.brokers\[0\] holds 2 URLs: one URL per list item"),
    ('brokers = ["mqtt://a", "mqtt://b, mqtt://c"]', r"mqtt\.brokers\[1\] holds 2 URLs"),
    ("brokers = [" + ", ".join(f'"mqtt://h{i}"' for i in range(17)) + "]",
     r"mqtt\.brokers has 17 URLs: at most 16"),
])
def test_a_broker_list_that_is_no_cluster_is_refused_in_one_line_naming_the_key(
        tmp_path, mqtt, says):
    with pytest.raises(ConfigError, match=says) as err:
        load(tmp_path, mqtt)
    text = str(err.value)
    assert len(text.splitlines()) == 1 and str(tmp_path / "agent.toml") in text
    assert "s3cret" not in text                     # a URL's password is never echoed


def test_the_endpoints_are_the_list_in_order_or_the_one_host():
    from harken.agent.sinks.mqtt.settings import MqttSection
    s = MqttSection(brokers=["mqtts://a", "mqtts://B:9000", "ssl://c:1"])
    assert s.endpoints() == [("a", 8883), ("b", 9000), ("c", 1)]
    assert MqttSection(host="h", port=2).endpoints() == [("h", 2)]


def test_mqtts_urls_turn_tls_on(tmp_path):
    c = load(tmp_path, 'brokers = ["mqtts://a", "mqtts://b"]')
    assert c.mqtt.tls and c.mqtt.endpoints() == [("a", 8883), ("b", 8883)]
    plain = load(tmp_path, 'brokers = ["mqtt://a", "b:1884"]')
    assert not plain.mqtt.tls and plain.mqtt.endpoints() == [("a", 1883), ("b", 1884)]


def test_the_url_rules_are_the_agents_and_watchs_alike(tmp_path):
    """hostile finding 12: a comma string is the list (the form harken watch takes), an
    international host name is its punycode, and harken watch refuses what the agent does
    (17 URLs, a tab) with the same words."""
    from harken.agent.plant.watch import watch_urls
    from harken.agent.sinks.mqtt.broker import BrokerError
    c = load(tmp_path, 'brokers = "mqtt://a:1, mqtt://b:2"')
    assert c.mqtt.endpoints() == [("a", 1), ("b", 2)]
    c = load(tmp_path, 'brokers = ["mqtt://bücher.example", "mqtt://[0:0:0:0:0:0:0:1]"]')
    assert c.mqtt.endpoints() == [("xn--bcher-kva.example", 1883), ("::1", 1883)]
    assert [u.host for u in watch_urls(["bücher.example,[0::1]"])] == \
        ["xn--bcher-kva.example", "::1"]
    for texts, says in [([",".join(f"mqtt://h{i}" for i in range(17))], "has 17 URLs: at most 16"),
                        (["mqtt://a\tb"], "has '\\t' in it"),
                        (["mqtt://[::1]", "mqtt://[0:0:0:0:0:0:0:1]"], "names the same broker"),
                        (["ftp://a"], "--broker[0]: broker URL 'ftp://a': scheme 'ftp'")]:
        with pytest.raises(BrokerError, match=re.escape(says)):
            watch_urls(texts)


@pytest.mark.parametrize("text, password", [
    ("mqtt://op:s3cret,mqtt://y@h1:1883,mqtt://h2:1883", None),
    ("mqtt://op:s3cret/ss@h1:1883", None),
    ("mqtt://op:s3cret#1@h1:1883", None),
    ("mqtt://op:s3cret?1@h1:1883", None),
    ("mqtt://op:s3cret%2Cmqtt%3A%2F%2Fy@h1:1883,mqtt://h2:1883", "s3cret,mqtt://y"),
    ("mqtt://op:s3c,ret@h1:1883,mqtt://h2:1883", "s3c,ret"),
])
def test_watch_never_shows_a_piece_of_a_password_and_says_how_to_write_one(text, password):
    """FINDINGS2 5 and 6: a password holding ",mqtt://" was split there and its head shown
    as a URL of its own; one with '/', '?' or '#' was read as a port. Either is now one
    line that shows no part of it and says to percent-encode; written so, it is taken."""
    from harken.agent.plant.watch import watch_urls
    from harken.agent.sinks.mqtt.broker import BrokerError
    if password is None:
        with pytest.raises(BrokerError) as err:
            watch_urls([text])
        msg = str(err.value)
        assert "s3c" not in msg and "port must be a number" not in msg, msg
        assert "%2F, %3F, %23" in msg, msg
    else:
        urls = watch_urls([text])
        assert urls[0].password == password and [u.host for u in urls] == ["h1", "h2"]
