"""One device, several machines (``[[machines]]``): the config merges each machine's tables
over the shared ones; a multi-channel input is read once and each machine scores its own
channel; machines with inputs of their own run side by side; a silent channel or a failed
input is reported by machine name while the others go on; single-machine configs load as
before."""

import json

import numpy as np
import pytest

from harken.agent.cli import main
from harken.agent.config import ConfigError, load_config, parse_config
from harken.agent.runner import Runner
from harken.agent.systemd import Notifier
from harken.agent.sources.wavio import read_wav, write_wav
from harken.testkit.files import write_agent_config, write_channels

RATE = 16000


def four_channels(fan_wav, tmp_path):
    """A 4-channel WAV: the fan clip on 1, the same clip louder on 2, silence on 3, the
    fan clip with a tone on 4; each channel differs, so a swapped mapping shows."""
    x, _ = read_wav(fan_wav, RATE)
    t = np.arange(len(x)) / RATE
    tone = x + 0.2 * np.sin(2 * np.pi * 1200 * t)
    return write_channels(tmp_path / "four.wav", [x, 2 * x, np.zeros_like(x), tone], RATE)


def config(tmp_path, bundle, audio, machines=None, name="agent.toml", **agent):
    sections = dict(
        agent={"node": "row", "state_dir": tmp_path / "state", **agent},
        model={"bundle": bundle, "artifact": "onnx-int8"},
        audio={"realtime": False, **audio},
        decision={"interval_s": 2, "threshold": 1e9},
        output={"stdout": False, "file": tmp_path / f"{name}.jsonl", "stats_s": 3600})
    if machines is not None:
        sections["machines"] = machines
    return write_agent_config(tmp_path / name, **sections)


def records(cfg) -> list[dict]:
    return [json.loads(line) for line in (cfg.parent / f"{cfg.name}.jsonl").read_text()
            .splitlines()]


def scores(recs, machine) -> list:
    return [r["score"] for r in recs if r["kind"] == "score" and r["machine"] == machine]


# -- config ------------------------------------------------------------------------------

BASE = {"model": {"bundle": "b"}, "decision": {"k_on": 1, "n": 2}}


def test_a_single_machine_config_is_its_own_only_machine():
    cfg = parse_config({"model": {"bundle": "b"}, "agent": {"machine": "fan"}}, "a.toml")
    assert not cfg.multi and cfg.machine_configs() == [cfg]


def test_machine_tables_override_the_shared_ones_key_by_key():
    cfg = parse_config({**BASE, "agent": {"section": 1}, "audio": {"device": "USB"},
                        "mqtt": {"client_id": "site", "outbox": "q.db"},
                        "machines": [{"name": "a", "channel": 2},
                                     {"name": "b", "section": 0, "decision": {"n": 5},
                                      "model": {"bundle": "other"},
                                      "audio": {"source": "file", "file": "b.wav"}}]},
                       "a.toml")
    a, b = cfg.machine_configs()
    assert (a.agent.machine, a.agent.section, a.audio.channel, a.audio.device) == \
        ("a", 1, 2, "USB")
    assert (a.decision.k_on, a.decision.n, a.model.bundle) == (1, 2, "b")
    assert (b.agent.section, b.decision.k_on, b.decision.n, b.model.bundle) == \
        (0, 1, 5, "other")
    # a machine on another source keeps only the shared keys that its source has
    assert (b.audio.source, b.audio.file) == ("file", "b.wav") and not hasattr(b.audio, "device")
    # one broker connection each (a Last Will per machine): ids and outboxes differ
    assert (a.mqtt.client_id, a.mqtt.outbox) == ("site-a", "q-a.db")
    assert (b.mqtt.client_id, b.mqtt.outbox) == ("site-b", "q-b.db")
    assert a.audio.input_key() != b.audio.input_key()
    assert a.override_file.name == "threshold-a.json"


@pytest.mark.parametrize("data, message", [
    ({**BASE, "machines": [{"name": "a"}, {"name": "a"}]}, "['a'] given more than once"),
    ({**BASE, "agent": {"machine": "x"}, "machines": [{"name": "a"}]},
     "give agent.machine (one machine) or [[machines]] entries, not both"),
    ({**BASE, "machines": [{"name": "a", "channel": 0}]}, "key 'machines[0].channel' = 0"),
    ({**BASE, "machines": [{"name": "a", "colour": 1}]}, "unknown key 'machines[0].colour'"),
    ({**BASE, "machines": [{"channel": 1}]}, "key 'machines[0].name' is required"),
    ({"machines": [{"name": "a", "model": {"bundle": "x"}}, {"name": "b"}]},
     "machines[1] (b): key 'model.bundle' is required"),
    ({**BASE, "machines": [{"name": "a", "decision": {"k_on": 3}}]},
     "machines[0] (a): key 'decision'"),
    ({**BASE, "machines": [{"name": "a", "audio": {"ring_s": 0}}]},
     "machines[0] (a): key 'audio.ring_s' = 0"),
    ({**BASE, "machines": [{"name": "a", "channel": 1, "audio": {"channel": 2}}]},
     "give 'channel' or 'audio.channel', not both"),
    ({**BASE, "audio": {"source": "stdin", "channels": 2, "channel": 3}},
     "audio.channel = 3, but stdin carries audio.channels = 2"),
    ({**BASE, "audio": {"source": "stdin", "channels": 65}}, "key 'audio.channels' = 65"),
])
def test_bad_machine_entries_are_refused_naming_the_entry_and_key(data, message):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "site.toml")
    assert message in str(err.value) and "site.toml" in str(err.value)


def test_stdin_carries_up_to_64_channels_as_a_machine_entry_can_name():
    """64 machines on one input (bench/bench_machines.py): the stdin source takes as many
    channels as ``channel`` can name."""
    cfg = parse_config({**BASE, "audio": {"source": "stdin", "channels": 64},
                        "machines": [{"name": f"m{k}", "channel": k} for k in (1, 64)]}, "a.toml")
    assert [v.audio.channel for v in cfg.select(None)] == [1, 64]


def test_a_command_picks_one_machine_or_names_the_known_ones():
    cfg = parse_config({**BASE, "machines": [{"name": "a"}, {"name": "b"}]}, "a.toml")
    assert [v.agent.machine for v in cfg.select("b")] == ["b"]
    with pytest.raises(ConfigError, match=r"no machine 'c' \(machines: \['a', 'b'\]\)"):
        cfg.select("c")


# -- running -----------------------------------------------------------------------------

def test_each_machine_scores_its_own_channel_of_one_input(ae_bundle, wav, tmp_path):
    """The scores of machine k equal a single-machine run on channel k: the mapping holds,
    and the shared read changes nothing."""
    four = four_channels(wav, tmp_path)
    multi = config(tmp_path, ae_bundle, {"source": "file", "file": four},
                   [{"name": f"pump-{k}", "channel": k} for k in (1, 2, 3, 4)])
    assert main(["run", "--config", str(multi)]) == 0
    recs = records(multi)
    runner = Runner.from_config(load_config(multi))
    try:                      # one input, one source, one shared backend for four machines
        assert len(runner.listeners) == 1 and len(runner.machines) == 4
        assert len({id(m.pipeline.scorer.backend) for m in runner.machines}) == 1
    finally:
        runner.close()                  # sources, sinks and the state lock
    for k in (1, 2, 4):
        one = config(tmp_path, ae_bundle, {"source": "file", "file": four, "channel": k},
                     name=f"one{k}.toml", machine=f"pump-{k}")
        assert main(["run", "--config", str(one)]) == 0
        got = scores(recs, f"pump-{k}")
        assert got == scores(records(one), f"pump-{k}") and len(got) == 5
        assert all(s is not None for s in got)
    assert len(set(map(tuple, (scores(recs, f"pump-{k}") for k in (1, 2, 4))))) == 3
    # the silent channel: its machine only, every interval, said once by name and channel
    assert scores(recs, "pump-3") == [None] * 5
    health = [r for r in recs if r.get("status") == "audio_health"]
    assert [(r["machine"], r["health"], r["channel"]) for r in health] == \
        [("pump-3", "silent", 3)]


def test_machines_with_files_of_their_own_run_side_by_side(ae_bundle, wav, tmp_path):
    """Two inputs (two threads): each machine's scores equal its file scored alone."""
    import shutil
    other = tmp_path / "other.wav"
    x, _ = read_wav(wav, RATE)
    from harken.agent.sources.wavio import write_wav
    write_wav(other, np.roll(x, RATE), RATE)
    multi = config(tmp_path, ae_bundle, {"source": "file", "file": wav},
                   [{"name": "fan"}, {"name": "pump", "audio": {"file": other}}])
    assert main(["run", "--config", str(multi)]) == 0
    recs = records(multi)
    for name, path in (("fan", wav), ("pump", other)):
        one_wav = tmp_path / f"{name}-alone.wav"
        shutil.copy(path, one_wav)
        one = config(tmp_path, ae_bundle, {"source": "file", "file": one_wav},
                     name=f"{name}.toml", machine=name)
        assert main(["run", "--config", str(one)]) == 0
        assert scores(recs, name) == scores(records(one), name) and len(scores(recs, name)) == 5
    assert scores(recs, "fan") != scores(recs, "pump")
    stopped = {r["machine"]: r["intervals"] for r in recs if r.get("status") == "stopped"}
    assert stopped == {"fan": 5, "pump": 5}


def test_a_failed_input_is_reported_and_the_others_go_on(ae_bundle, wav, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")        # exists, but is no WAV
    multi = config(tmp_path, ae_bundle, {"source": "file", "file": wav},
                   [{"name": "fan"}, {"name": "pump", "audio": {"file": broken}}])
    assert main(["run", "--config", str(multi)]) == 0
    recs = records(multi)
    failed = [r for r in recs if r.get("status") == "audio_failed"]
    assert [r["machine"] for r in failed] == ["pump"] and "broken.wav" in failed[0]["error"]
    assert len(scores(recs, "fan")) == 5 and scores(recs, "pump") == []


def test_a_machine_error_names_the_machine(ae_bundle, wav, tmp_path, capsys):
    multi = config(tmp_path, ae_bundle, {"source": "file", "file": wav},
                   [{"name": "fan"}, {"name": "pump", "section": 7}])
    assert main(["run", "--config", str(multi)]) == 2
    err = capsys.readouterr().err
    assert "machine pump:" in err and "key 'agent.section' = 7" in err


def test_check_config_resolves_every_machine(ae_bundle, wav, tmp_path, capsys):
    multi = config(tmp_path, ae_bundle, {"source": "file", "file": wav},
                   [{"name": "fan", "channel": 1}, {"name": "pump", "channel": 1,
                                                     "decision": {"threshold": 3.5}}])
    assert main(["check-config", str(multi)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(m["machine"], m["threshold"], m["threshold_from"]) for m in out["resolved"]] == \
        [("fan", 1e9, "config decision.threshold"), ("pump", 3.5, "config decision.threshold")]


def test_calibrate_sets_each_machine_from_its_channel(ae_bundle, wav, tmp_path, capsys):
    four = four_channels(wav, tmp_path)
    multi = config(tmp_path, ae_bundle, {"source": "file", "file": four},
                   [{"name": f"pump-{k}", "channel": k} for k in (1, 2, 3)])
    # three distinct recordings (calibrate leaves a copy out): the clip shifted by 1 s
    x, _ = read_wav(wav, RATE)
    fours = [str(four)]
    for k in (1, 2):
        (tmp_path / f"shift{k}").mkdir()
        write_wav(tmp_path / f"shift{k}" / "ten.wav", np.roll(x, k * RATE), RATE)
        fours.append(str(four_channels(tmp_path / f"shift{k}" / "ten.wav", tmp_path / f"shift{k}")))
    # a silent channel cannot be calibrated: said for that machine, the others are written
    assert main(["calibrate", "--config", str(multi), "--files", *fours,
                 "--quiet", "--no-plot"]) == 2
    captured = capsys.readouterr()
    out = json.loads(captured.out)["machines"]
    assert "machine pump-3: only 0 scoreable intervals" in out["pump-3"]["error"]
    assert "pump-3" in captured.err
    state = tmp_path / "state"
    assert {p.name for p in state.glob("threshold-*.json")} == \
        {"threshold-pump-1.json", "threshold-pump-2.json"}
    assert out["pump-1"]["channel"] == 1 and out["pump-1"]["threshold"] != \
        out["pump-2"]["threshold"]
    # --machine: one of them, the same figures
    assert main(["calibrate", "--config", str(multi), "--files", *fours,
                 "--quiet", "--no-plot", "--machine", "pump-2"]) == 0
    again = json.loads(capsys.readouterr().out)["machines"]
    assert list(again) == ["pump-2"] and again["pump-2"]["threshold"] == \
        out["pump-2"]["threshold"]


def test_score_takes_one_channel_of_a_recording(ae_bundle, wav, tmp_path, capsys):
    four = four_channels(wav, tmp_path)
    assert main(["score", str(ae_bundle), str(four), "--channel", "1", "--json"]) == 0
    channel_one = json.loads(capsys.readouterr().out)[0]["score"]
    assert main(["score", str(ae_bundle), str(wav), "--json"]) == 0
    assert channel_one == json.loads(capsys.readouterr().out)[0]["score"]
    assert main(["score", str(ae_bundle), str(four), "--channel", "5"]) == 2
    assert "has 4 channel(s); audio.channel 5 does not exist" in capsys.readouterr().err
    assert main(["score", str(ae_bundle), str(four), "--channel", "0"]) == 2
    assert "argument --channel: '0': expected 1 to 64" in capsys.readouterr().err


def test_the_watchdog_waits_for_every_input_but_not_for_a_lost_one():
    sent = []
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1"})
    n.send = sent.append
    n.progress([100, 100])
    assert sent == ["WATCHDOG=1"]
    n.progress([200, 100])                   # the second input stalled: no ping
    assert sent == ["WATCHDOG=1"]
    n.progress([200, None])                  # ... until its loss is reported
    assert sent == ["WATCHDOG=1"] * 2
    n.progress([None, None])                 # every input lost: systemd restarts us
    assert sent == ["WATCHDOG=1"] * 2
    n.progress([300, 150])                   # both back and moving
    assert sent == ["WATCHDOG=1"] * 3
