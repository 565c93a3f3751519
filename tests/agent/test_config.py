"""Agent configuration: every refusal names the file, the key and what is allowed; every
shipped firmware config loads."""

from pathlib import Path

import pytest

from harken.agent.config import ConfigError, load_config

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware_configs"
GOOD = """
[agent]
node = "n1"
machine = "fan"
[model]
bundle = "b"
[audio]
source = "file"
file = "x.wav"
"""


def write(tmp_path, text):
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_every_firmware_config_loads():
    files = sorted(FIRMWARE.glob("*.toml"))
    assert {f.stem for f in files} >= {"raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano",
                                       "generic-x86", "demo"}
    for f in files:
        for c in load_config(f).machine_configs():
            assert c.model.bundle and c.decision.k_on <= c.decision.n, f
    row = load_config(FIRMWARE / "pump-row-4ch.toml").machine_configs()
    assert [(c.agent.machine, c.audio.channel) for c in row] == \
        [(f"pump-{k}", k) for k in (1, 2, 3, 4)]
    assert len({c.audio.input_key() for c in row}) == 1        # one stream for all four


def test_relative_paths_are_relative_to_the_config(tmp_path):
    c = load_config(write(tmp_path, GOOD))
    assert c.path(c.model.bundle) == tmp_path / "b"
    assert c.override_file == tmp_path / "state" / "threshold-fan.json"


@pytest.mark.parametrize("text, message", [
    ("[agent\nnode=1", "not valid TOML"),
    (GOOD + "\n[extra]\nx = 1\n", "unknown key 'extra'"),
    (GOOD.replace('node = "n1"', 'node = "n1"\nnodes = 2'), "unknown key 'agent.nodes'"),
    (GOOD.replace('source = "file"', 'source = "radio"'),
     r"key 'audio.source' = 'radio': Input should be 'mic', 'file' or 'stdin'"),
    (GOOD.replace('bundle = "b"', 'threads = 0'), "key 'model.bundle' is required"),
    (GOOD + "\n[model.extra]\n", "unknown key"),
    (GOOD.replace('file = "x.wav"', ''), "audio.source = 'file' needs audio.file"),
    # [audio] holds the keys of the source it names, and no other source's
    (GOOD + 'device = "USB"\n',
     r"unknown key 'audio.device' \(not a key of audio.source = 'file'\)"),
    (GOOD + "\n[decision]\nk_on = 5\nn = 3\n", r"decision.k_on \(5\) cannot exceed"),
    (GOOD.replace('machine = "fan"', 'machine = "fan/1"'), "key 'agent.machine' = 'fan/1'"),
])
def test_bad_configs_are_refused_by_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.toml: cannot read \(No such file or directory\)"):
        load_config(tmp_path / "nope.toml")


def test_values_can_come_from_files(tmp_path):
    (tmp_path / "node-id").write_text("press-07\n")
    c = load_config(write(tmp_path, GOOD.replace('node = "n1"', 'node_file = "node-id"')))
    assert c.agent.node == "press-07"
    with pytest.raises(ConfigError, match="key 'agent.node_file': cannot read a value from"):
        load_config(write(tmp_path, GOOD.replace('node = "n1"', 'node_file = "missing"')))
    for content, why in ((b"", "empty file"), (b"\xff\xfe\x00", "not UTF-8 text")):
        (tmp_path / "bad-id").write_bytes(content)
        with pytest.raises(ConfigError, match=f"bad-id \\({why}\\)"):
            load_config(write(tmp_path, GOOD.replace('node = "n1"', 'node_file = "bad-id"')))
    with pytest.raises(ConfigError, match="give 'agent.node' or 'agent.node_file', not both"):
        load_config(write(tmp_path, GOOD.replace('node = "n1"', 'node = "a"\nnode_file = "x"')))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_threshold_that_is_not_a_number_is_refused_naming_the_key(tmp_path, value):
    with pytest.raises(ConfigError, match=r"key 'decision\.threshold'"):
        load_config(write(tmp_path, GOOD + f"[decision]\nthreshold = {value}\n"))


def test_a_password_of_the_wrong_type_is_not_echoed(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'mqtt\.password' \(value not shown\)") as err:
        load_config(write(tmp_path, GOOD + "[mqtt]\nusername = \"u\"\npassword = 98765432\n"))
    assert "98765432" not in str(err.value)


def test_a_binary_file_is_refused_naming_the_file(tmp_path):
    p = tmp_path / "agent.toml"
    p.write_bytes(b"\xff\xfe\x00binary\x81")
    with pytest.raises(ConfigError, match=r"agent\.toml: not a TOML text file"):
        load_config(p)


def test_a_password_file_others_can_read_is_warned_about(tmp_path, caplog):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    text = GOOD + '[mqtt]\nusername = "u"\npassword_file = "pw"\n'
    secret.chmod(0o644)
    with caplog.at_level("WARNING", logger="harken"):
        assert load_config(write(tmp_path, text)).mqtt.password == "s3cret"
    assert "'mqtt.password_file'" in caplog.text and "can be read by other users" in caplog.text
    assert "(mode 644); chmod 600 it" in caplog.text
    assert "s3cret" not in caplog.text
    caplog.clear()
    secret.chmod(0o600)
    with caplog.at_level("WARNING", logger="harken"):
        load_config(write(tmp_path, text))
    assert caplog.text == ""


def test_a_password_sent_in_plain_text_off_this_machine_is_warned_about_once():
    from harken.agent.config import MqttSection
    from harken.agent.sinks.mqtt.sink import plaintext_password_warning
    remote = MqttSection(enabled=True, host="broker.plant", username="u", password="p")
    assert "goes to broker.plant:1883 unencrypted" in plaintext_password_warning(remote)
    for quiet in (remote.model_copy(update={"tls": True}),
                  remote.model_copy(update={"host": "127.0.0.1"}),
                  remote.model_copy(update={"host": "localhost"}),
                  remote.model_copy(update={"username": None, "password": None})):
        assert plaintext_password_warning(quiet) is None


def test_a_password_without_a_user_name_is_refused_in_the_config(tmp_path):
    with pytest.raises(ConfigError, match=r"needs mqtt\.username"):
        load_config(write(tmp_path, GOOD + '[mqtt]\npassword_env = "X"\n'))


def test_one_way_to_find_a_password(tmp_path, monkeypatch):
    from harken.agent.config import resolve_password
    (tmp_path / "pw").write_text("from-file\n")
    (tmp_path / "pw").chmod(0o600)
    monkeypatch.setenv("PW", "from-env")
    assert resolve_password("given", tmp_path / "pw", "PW", "k") == "given"
    assert resolve_password(None, tmp_path / "pw", "PW", "k") == "from-file"
    assert resolve_password(None, None, "PW", "k") == "from-env"
    assert resolve_password(None, None, None, "k") is None
    monkeypatch.delenv("PW")
    with pytest.raises(ConfigError, match="k: environment variable PW is not set"):
        resolve_password(None, None, "PW", "k")
    with pytest.raises(ConfigError, match="cannot read a password"):
        resolve_password(None, tmp_path / "missing", None, "k")


def test_a_loaded_config_is_frozen_and_never_shows_the_password(tmp_path):
    from pydantic import ValidationError
    c = load_config(write(tmp_path, GOOD + '[mqtt]\nusername = "u"\npassword = "s3cret"\n'))
    with pytest.raises(ValidationError):
        c.agent.node = "other"
    assert "s3cret" not in repr(c) and "s3cret" not in repr(c.mqtt)
    assert c.mqtt.tls is False and c.mqtt.tls_insecure is False
    assert (c.mqtt.ca_file, c.mqtt.cert_file, c.mqtt.key_file) == (None, None, None)


def test_one_character_names_are_allowed(tmp_path):
    c = load_config(write(tmp_path, GOOD.replace('"n1"', '"a"').replace('"fan"', '"b"')
                          + '[mqtt]\nprefix = "p"\ndiscovery_prefix = "d"\n'))
    assert (c.agent.node, c.agent.machine, c.mqtt.prefix, c.mqtt.discovery_prefix) == \
        ("a", "b", "p", "d")


def test_state_dir_is_made_with_its_parents_and_an_existing_one_is_fine(tmp_path):
    c = load_config(write(tmp_path, GOOD))
    folder = c.writable_folder("agent.state_dir", "a/b/c")
    assert folder == tmp_path / "a" / "b" / "c" and folder.is_dir()
    assert c.writable_folder("agent.state_dir", "a/b/c") == folder      # again: no error


def test_a_file_in_the_way_of_a_folder_is_named_with_the_reason(tmp_path):
    c = load_config(write(tmp_path, GOOD))
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ConfigError, match=r"agent.toml: key 'agent.state_dir' = 'taken/sub': "
                                          r"cannot create the folder .*taken/sub "
                                          r"\(Not a directory\)"):
        c.writable_folder("agent.state_dir", "taken/sub")


def test_a_read_only_state_dir_is_refused(tmp_path):
    from tests.helpers import tmpfs
    c = load_config(write(tmp_path, GOOD))
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        with pytest.raises(ConfigError, match=r"key 'agent.state_dir' = .*is not writable"):
            c.writable_folder("agent.state_dir", str(ro))


def test_an_unreadable_value_file_says_why(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'agent.node_file': cannot read a value from "
                                          r".*missing \(No such file or directory\)"):
        load_config(write(tmp_path, GOOD.replace('node = "n1"', 'node_file = "missing"')))


def test_a_section_that_is_not_a_table_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'agent' = 5: Input should be a valid "
                                          r"dictionary"):
        load_config(write(tmp_path, 'agent = 5\n[model]\nbundle = "b"\n'))


def test_an_unknown_section_first_does_not_hide_the_files_of_later_ones(tmp_path):
    from harken.agent.config import parse_config
    (tmp_path / "bundle-path").write_text("my-bundle\n")
    with pytest.raises(ConfigError) as err:
        parse_config({"extra": {"x": 1}, "model": {"bundle_file": "bundle-path"}},
                     str(tmp_path / "agent.toml"))
    assert "unknown key 'extra'" in str(err.value) and "model" not in str(err.value)


def test_keys_that_end_in_file_are_not_all_indirections(tmp_path):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    c = load_config(write(tmp_path, GOOD + '[mqtt]\ntls = true\nca_file = "ca.pem"\n'))
    assert c.mqtt.ca_file == "ca.pem" and c.path(c.mqtt.ca_file) == tmp_path / "ca.pem"


def test_source_file_cannot_be_set_from_the_data():
    from harken.agent.config import parse_config
    with pytest.raises(ConfigError, match="agent.toml: .*source_file"):
        parse_config({"model": {"bundle": "b"}, "source_file": "x"}, "agent.toml")


def test_each_machine_keeps_its_state_in_files_named_after_it(tmp_path):
    """The override and the enrolled bank of a machine are found by its name under
    agent.state_dir, relative to the config file (docs/agent.md)."""
    from harken.agent.config import parse_config
    config = parse_config({"agent": {"state_dir": "st"}, "model": {"bundle": "b"},
                           "machines": [{"name": "pump-1"}, {"name": "pump-2"}]},
                          str(tmp_path / "agent.toml"))
    one, two = config.machine_configs()
    assert one.override_file == tmp_path / "st" / "threshold-pump-1.json"
    assert two.bank_file == tmp_path / "st" / "enrolled-pump-2.npz"


def test_the_allowed_values_read_as_pydantic_lists_them():
    from harken.agent.config import _expected
    assert _expected(["mic"]) == "'mic'"
    assert _expected(["mic", "file", "stdin"]) == "'mic', 'file' or 'stdin'"


@pytest.mark.parametrize("audio, message", [
    (5, "key 'audio' = 5: Input should be a valid dictionary or object to extract fields "
        "from"),
    ({"source": "file"}, "key 'audio' = {'source': 'file'}: audio.source = "
                         "'file' needs audio.file"),
    ({"source": "file", "file": "a.wav", "device": "x"},
     "unknown key 'audio.device' (not a key of audio.source = 'file')"),
])
def test_an_audio_table_error_names_the_key_without_the_sources_tag(audio, message):
    """pydantic puts the source's tag in an error's path (audio.file.device); the user's
    key has none, and a table that is not one has no source at all."""
    from harken.agent.config import parse_config
    with pytest.raises(ConfigError) as err:
        parse_config({"audio": audio, "model": {"bundle": "b"}}, "x.toml")
    assert str(err.value) == f"x.toml: {message}"


@pytest.mark.parametrize("entry, ok", [({"section": 99}, True), ({"section": 100}, False),
                                        ({"channel": 64}, True), ({"channel": 65}, False),
                                        ({"channel": 0}, False)])
def test_a_machine_entry_section_and_channel_stay_in_their_documented_range(entry, ok):
    from harken.agent.config import parse_config
    data = {"model": {"bundle": "b"}, "machines": [{"name": "m", **entry}]}
    if ok:
        parse_config(data, "x.toml")
    else:
        with pytest.raises(ConfigError, match=r"machines\[0\]\.(section|channel)"):
            parse_config(data, "x.toml")


def test_a_secret_file_is_read_in_a_table_that_follows_a_list(tmp_path):
    """``KEY_file`` values are read table by table; an entry that is no table (the
    machines list) before one must not stop the reading."""
    from harken.agent.config import parse_config
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o600)
    config = parse_config({"machines": [{"name": "m"}], "model": {"bundle": "b"},
                           "mqtt": {"username": "u", "password_file": "pw"}},
                          str(tmp_path / "agent.toml"))
    assert config.mqtt.resolved_password() == "s3cret"


# -- names and numbers: bounded, printable, in range (docs/reliability.md "Config and command
# line"); every refusal names the key and what is allowed

def _refused(data: dict) -> str:
    from harken.agent.config import parse_config
    with pytest.raises(ConfigError) as err:
        parse_config({"model": {"bundle": "b"}, **data}, "x.toml")
    return str(err.value)


@pytest.mark.parametrize("data, key", [
    ({"agent": {"machine": "f" * 65}}, "agent.machine"),
    ({"agent": {"node": "n" * 65}}, "agent.node"),
    ({"machines": [{"name": "m" * 65}]}, "machines[0].name"),
    ({"mqtt": {"prefix": "p" * 129}}, "mqtt.prefix"),
    ({"mqtt": {"group_id": "g" * 65}}, "mqtt.group_id"),
    ({"mqtt": {"edge_node_id": "e" * 65}}, "mqtt.edge_node_id"),
    ({"mqtt": {"client_id": "c" * 70_000}}, "mqtt.client_id"),
    ({"mqtt": {"username": "u" * 257}}, "mqtt.username"),
])
def test_names_and_ids_are_bounded_in_length(data, key):
    """A name becomes a file name, a topic and a client id: a 70,000-character client id
    killed paho's thread (issue 37)."""
    err = _refused(data)
    assert f"key '{key}' = " in err and "characters, at most" in err
    assert len(err) < 400                                  # the value is not echoed whole


@pytest.mark.parametrize("data, key", [
    ({"agent": {"machine": "fan\n"}}, "agent.machine"),
    ({"mqtt": {"client_id": "a\x00b"}}, "mqtt.client_id"),
    ({"mqtt": {"client_id": "a\nb"}}, "mqtt.client_id"),
    ({"mqtt": {"group_id": "plant\x1b[2J"}}, "mqtt.group_id"),
    ({"mqtt": {"edge_node_id": "edge\u202e"}}, "mqtt.edge_node_id"),
    ({"mqtt": {"username": "u\r\n"}}, "mqtt.username"),
    ({"mqtt": {"host": "broker\n"}}, "mqtt.host"),
    ({"model": {"bundle": "b\x00.tar.gz"}}, "model.bundle"),
    ({"agent": {"state_dir": "st\x07ate"}}, "agent.state_dir"),
])
def test_names_ids_and_paths_refuse_control_and_invisible_characters(data, key):
    """NUL or newline in client_id/group_id made the broker drop the connection at every
    retry with nothing logged (issue 37); in a path, NUL was a ValueError traceback."""
    err = _refused(data)
    assert f"key '{key}' = " in err and "control or invisible character" in err
    assert "allowed:" in err


@pytest.mark.parametrize("name", ["..", ".", "..."])
def test_a_machine_name_of_dots_is_refused(name):
    err = _refused({"machines": [{"name": name}]})
    assert "key 'machines[0].name'" in err and "not only dots" in err


@pytest.mark.parametrize("prefix", ["harken/", "/harken", "a//b"])
def test_a_topic_prefix_with_an_empty_level_is_refused(prefix):
    assert "empty topic level" in _refused({"mqtt": {"prefix": prefix}})


def test_machine_names_differing_only_in_case_are_refused():
    """fan and Fan share a state file on a case-insensitive file system (an SD card's
    FAT) and read as one machine on a dashboard."""
    err = _refused({"machines": [{"name": "fan", "channel": 1}, {"name": "Fan", "channel": 2}]})
    assert "machine names must differ" in err and "['Fan', 'fan']" in err


@pytest.mark.parametrize("data, key, allowed", [
    ({"decision": {"interval_s": True}}, "decision.interval_s", "0.5 to 600 seconds"),
    ({"decision": {"interval_s": 0.1}}, "decision.interval_s", "0.5 to 600 seconds"),
    ({"decision": {"k_on": True}}, "decision.k_on", "1 to 100 intervals"),
    ({"model": {"bundle": "b", "threads": 1000}}, "model.threads", "1 to 64 threads"),
    ({"mqtt": {"outbox_max": 10 ** 30}}, "mqtt.outbox_max", "10 to 1e+09 messages"),
    ({"mqtt": {"keepalive": 1}}, "mqtt.keepalive", "5 to 3600 seconds"),
    ({"mqtt": {"port": True}}, "mqtt.port", "1 to 65535"),
    ({"output": {"stats_s": 0.5}}, "output.stats_s", "1 to 3600 seconds"),
    ({"audio": {"block_s": 0}}, "audio.block_s", "above 0, up to 2 seconds"),
    ({"audio": {"ring_s": 10 ** 400}}, "audio.ring_s", "1 to 600 seconds"),
    ({"decision": {"threshold": "1.5"}}, "decision.threshold", "a finite number"),
])
def test_every_number_is_a_number_in_range_with_its_unit(data, key, allowed):
    """A TOML ``true`` was read as 1 (a 1-s interval; port 1); an outbox of 10^30 rows
    passed; a refusal did not say seconds or intervals."""
    err = _refused(data)
    assert f"key '{key}' = " in err and allowed in err


def test_too_many_machines_are_refused_in_one_line():
    err = _refused({"machines": [{"name": f"m{i}"} for i in range(300)]})
    assert "key 'machines' = a list of 300 items" in err and "at most 256" in err
    assert err.count("\n") == 0


def test_a_refused_value_is_echoed_short():
    err = _refused({"agent": {"machine": "x" * 1_000_000}})
    assert "... (1000002 characters)" in err and len(err) < 400      # the repr's quotes
    err = _refused({"decision": {"k_on": 10 ** 3000}})
    assert "a number of more than 60 digits" in err and len(err) < 400


def test_a_config_that_is_no_regular_file_is_refused_without_reading_it(tmp_path):
    """A FIFO blocked the agent before it said anything; ``-`` read as a missing file."""
    import os
    fifo = tmp_path / "agent.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"agent\.toml: cannot read a config from it \(not a "
                                          r"regular file\)"):
        load_config(fifo)
    with pytest.raises(ConfigError, match=r"cannot read a config from it \(a folder\)"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match=r"^-: a config is read from a file, not from stdin"):
        load_config("-")
    big = tmp_path / "big.toml"
    big.write_text(GOOD + "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"big\.toml: \d+ bytes, a config is at most 1048576"):
        load_config(big)


@pytest.mark.parametrize("text, message", [
    ("x = " + "[" * 100_000 + "]" * 100_000, "nested too deep"),
    ("x = " + "9" * 5000, "not valid TOML"),
])
def test_deep_nesting_and_huge_integers_are_one_line(tmp_path, text, message):
    """tomllib raised RecursionError and a bare ValueError (an integer of over 4300 digits):
    tracebacks."""
    with pytest.raises(ConfigError, match=message) as err:
        load_config(write(tmp_path, GOOD + text + "\n"))
    assert str(err.value).count("\n") == 0 and len(str(err.value)) < 400


def test_a_value_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    import os
    os.mkfifo(tmp_path / "node-id")
    with pytest.raises(ConfigError, match=r"node-id \(not a regular file\)"):
        load_config(write(tmp_path, GOOD.replace('node = "n1"', 'node_file = "node-id"')))


def test_a_config_path_with_control_characters_is_echoed_escaped(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "a\x1b]0;pwned\x07.toml")
    assert "\x1b" not in str(err.value) and "\\x1b" in str(err.value)


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path):
    """Notepad writes one; it was 'not valid TOML (Invalid statement (at line 1, column 1))'."""
    p = tmp_path / "agent.toml"
    p.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_config(p).agent.machine == "fan"


def test_a_value_file_that_never_ends_is_read_only_at_its_start(tmp_path):
    """``password_file = "/dev/zero"`` (a device, never a secret) is refused at once; a
    regular file is read only at its start (a secret or an id is one short line)."""
    with pytest.raises(ConfigError, match=r"/dev/zero \(not a regular file\)"):
        load_config(write(tmp_path, GOOD + '[mqtt]\nusername = "u"\npassword_file = '
                                           '"/dev/zero"\n'))
    from harken.common.settings import FIRST_LINE_MAX, first_line
    (tmp_path / "long").write_text("x" * (FIRST_LINE_MAX * 4))
    assert len(first_line(tmp_path / "long")) == FIRST_LINE_MAX


def test_a_config_that_names_itself_as_a_value_file_reads_its_own_first_line(tmp_path):
    """No include mechanism, so no loop: ``bundle_file`` naming the config itself takes its
    first line as the bundle path, refused when the bundle is opened."""
    p = tmp_path / "agent.toml"
    p.write_text('[model]\nbundle_file = "agent.toml"\n')
    assert load_config(p).model.bundle == "[model]"


def test_a_sparkplug_id_of_lookalike_letters_is_another_id():
    """Sparkplug ids are UTF-8 (the spec): a Cyrillic 'һarken' is accepted, and is another
    group than 'harken' (a plant host subscribed to harken does not see it)."""
    from harken.agent.config import parse_config
    c = parse_config({"model": {"bundle": "b"}, "mqtt": {"group_id": "\u04bbarken"}}, "x.toml")
    assert c.mqtt.group_id != "harken"
    with pytest.raises(ConfigError, match="key 'machines\\[0\\].name' = '\uff26\uff41\uff4e'"):
        parse_config({"model": {"bundle": "b"}, "machines": [{"name": "\uff26\uff41\uff4e"}]},
                     "x.toml")
