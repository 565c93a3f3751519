"""A new source and a new sink are one module plus one registration line: the example plugin
(tests/agent/plugins_example.py: a ``tone`` source, a ``csv`` sink), named in the config's
``agent.plugins``, is checked by ``harken check-config`` like a built-in table (a bad value
refused by file, key and what was expected) and used by ``harken run``."""

import csv
import json
import sys

import pytest

from harken.agent.cli import main
from harken.agent.sinks import SINKS
from harken.agent.sources import SOURCES
from harken.testkit.files import write_agent_config

PLUGIN = "tests.agent.plugins_example"


@pytest.fixture
def forget_plugins():
    """The registries belong to the process: what the test's config registers is taken
    out again, so that other tests see the built-in sources and sinks only."""
    saved = dict(SOURCES), dict(SINKS)
    yield
    for registry, before in zip((SOURCES, SINKS), saved):
        for name in set(registry) - set(before):
            del registry[name]
    sys.modules.pop(PLUGIN, None)


def plugin_config(tmp_path, bundle, plugins=(PLUGIN,), audio=None, csv_table=None):
    agent = {"node": "n", "machine": "fan", "state_dir": tmp_path / "state"}
    sections = dict(
        agent=agent, model={"bundle": bundle, "artifact": "onnx-int8"},
        audio={"source": "tone", "frequency": 440, "seconds": 30, **(audio or {})},
        decision={"interval_s": 5, "threshold": 1e9},
        output={"stdout": False, "file": tmp_path / "out.jsonl"},
        csv={"enabled": True, "file": "scores.csv", **(csv_table or {})})
    path = write_agent_config(tmp_path / "agent.toml", **sections)
    if plugins:              # a TOML array: write_agent_config writes scalars only
        text = path.read_text()
        path.write_text(text.replace("[agent]\n", f"[agent]\nplugins = {json.dumps(list(plugins))}\n"))
    return path


def test_a_plugin_source_and_sink_are_checked_and_run(ae_bundle, tmp_path, capsys,
                                                      forget_plugins):
    # without the registration line, neither the source nor the table exists
    cfg = plugin_config(tmp_path, ae_bundle, plugins=[])
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: key 'audio.source' = 'tone': Input should be 'mic', 'file' or 'stdin'" in err
    assert f"{cfg}: unknown key 'csv'" in err

    cfg = plugin_config(tmp_path, ae_bundle)
    assert main(["check-config", str(cfg)]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["audio"] == {"source": "tone", "channel": None, "block_s": 0.1,
                                 "frequency": 440.0, "level": 0.1, "seconds": 30.0}
    assert resolved["csv"] == {"enabled": True, "file": "scores.csv", "delimiter": ","}

    assert main(["run", "--config", str(cfg), "--intervals", "3"]) == 0
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    scores = [r for r in records if r["kind"] == "score"]
    started = next(r for r in records if r.get("status") == "started")
    assert started["source"] == "tone"
    assert len(scores) == 3 and all(s["status"] == "ok" and s["score"] > 0 for s in scores)
    with open(tmp_path / "scores.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert [(r[0], int(r[1]), r[3]) for r in rows] == [("fan", s["seq"], "ok") for s in scores]
    assert [float(r[2]) for r in rows] == pytest.approx([s["score"] for s in scores], rel=1e-5)


@pytest.mark.parametrize("audio, csv_table, message", [
    ({"frequency": -5}, None, "key 'audio.frequency' = -5: Input should be greater than 0"),
    ({"colour": "red"}, None, "unknown key 'audio.colour' (not a key of audio.source = 'tone')"),
    ({"device": "USB"}, None, "unknown key 'audio.device' (not a key of audio.source = 'tone')"),
    (None, {"delimiter": ";;"},
     "key 'csv.delimiter' = ';;': String should have at most 1 character"),
])
def test_a_bad_plugin_setting_is_refused_by_file_and_key(tmp_path, capsys, forget_plugins,
                                                         audio, csv_table, message):
    cfg = plugin_config(tmp_path, tmp_path / "no-bundle", audio=audio, csv_table=csv_table)
    assert main(["check-config", str(cfg)]) == 2
    assert f"{cfg}: {message}" in capsys.readouterr().err


def test_a_plugin_that_cannot_be_imported_is_named(tmp_path, capsys, forget_plugins):
    cfg = plugin_config(tmp_path, tmp_path / "b", plugins=["tests.agent.no_such_plugin"])
    assert main(["check-config", str(cfg)]) == 2
    assert (f"{cfg}: key 'agent.plugins[0]' = 'tests.agent.no_such_plugin': cannot import it "
            f"(No module named 'tests.agent.no_such_plugin')") in capsys.readouterr().err


BROKEN_PLUGINS = {
    "raises": ("raise RuntimeError('no licence file')\n",
               "importing it failed: RuntimeError: no licence file"),
    "syntax": ("def (:\n", "importing it failed: SyntaxError"),
    "takes_a_builtin_name": (
        "from harken.agent.sources.base import Source, register\n"
        "from harken.agent.sources.file import FileSettings\n"
        "@register\nclass Again(Source):\n    name = 'file'\n    Settings = FileSettings\n",
        "importing it failed"),
    "takes_the_mqtt_table": (
        "from harken.agent.sinks.base import Sink, SinkSettings, register\n"
        "class S(SinkSettings):\n    x: int = 0\n"
        "@register\nclass Mine(Sink):\n    name = 'mine'\n    table = 'mqtt'\n    Settings = S\n"
        "    @classmethod\n    def enabled(cls, config):\n        return False\n",
        "table [mqtt] is taken"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_PLUGINS))
def test_a_plugin_that_breaks_on_import_is_one_line_naming_it(case, tmp_path, capsys,
                                                              forget_plugins, monkeypatch):
    """A plugin is the user's code: whatever its import raises (its own error, a syntax
    error, a registration the registries refuse) is named in one line, never a traceback."""
    code, message = BROKEN_PLUGINS[case]
    (tmp_path / f"broken_{case}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = write_agent_config(tmp_path / "agent.toml", agent={"plugins": [f"broken_{case}"]},
                             model={"bundle": "b"})
    try:
        assert main(["check-config", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert f"{cfg}: key 'agent.plugins[0]' = 'broken_{case}': " in err and message in err
        assert "Traceback" not in err and err.count("\n") == 1
    finally:
        sys.modules.pop(f"broken_{case}", None)


@pytest.mark.parametrize("name", [".relative", "a..b", "a.", "1abc", "a-b"])
def test_a_plugin_name_that_is_no_module_name_is_refused_and_never_imported(name, tmp_path,
                                                                          capsys):
    cfg = write_agent_config(tmp_path / "agent.toml", agent={"plugins": [name]},
                             model={"bundle": "b"})
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "agent.plugins" in err and "String should match pattern" in err
    assert "Traceback" not in err


def test_a_machine_whose_source_is_no_name_is_refused_by_key(tmp_path, capsys):
    cfg = write_agent_config(tmp_path / "agent.toml", model={"bundle": "b"},
                             machines=[{"name": "m1", "audio": {"source": ["x"]}}])
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "machines[0] (m1)" in err and "audio.source" in err and "Traceback" not in err
