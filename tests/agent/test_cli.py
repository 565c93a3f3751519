import json

import numpy as np
import pytest

from harken.agent.cli import main
from harken.agent.features import logmel, preset
from harken.agent.sources.wavio import read_wav, write_wav


def test_features_command_matches_the_library(tmp_path, capsys, rng):
    wav = tmp_path / "a.wav"
    write_wav(wav, rng.standard_normal(16000) * 0.1, 16000)
    assert main(["features", str(wav), "--preset", "mobilenetv2", "--save", str(tmp_path / "f.npy")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 32 and summary["mels"] == 128 and summary["preset"] == "mobilenetv2"
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"),
                                  logmel(read_wav(wav)[0], preset("mobilenetv2")))


def test_bad_file_is_one_line(tmp_path, capsys):
    assert main(["features", str(tmp_path / "none.wav")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harken: error:") and "none.wav: no such file" in err


# -- every option's value checked as it is parsed (docs/reliability.md "Config and command
# line"): exit 2, one message naming the option and what is allowed

@pytest.mark.parametrize("argv, message", [
    (["run", "--config", "a.toml", "--intervals", "0"], "argument --intervals: '0': expected "
                                                         "1 to 1e+09 intervals"),
    (["run", "--config", "a.toml", "--intervals=-3"], "argument --intervals: '-3': expected"),
    (["score", "b", "a.wav", "--threads", "0"], "argument --threads: '0': expected 1 to 64 "
                                                "threads"),
    (["score", "b", "a.wav", "--threads", "1e9"], "'1e9' is not a whole number"),
    (["score", "b", "a.wav", "--threshold", "nan"], "argument --threshold: 'nan': expected a "
                                                    "finite number"),
    (["score", "b", "a.wav", "--threshold", "1e400"], "'1e400': expected a finite number"),
    (["score", "b", "a.wav", "--threshold=-inf"], "'-inf': expected a finite number"),
    (["score", "b", "a.wav", "--section", "100"], "argument --section: '100': expected 0 to "
                                                  "99"),
    (["score", "b", "a.wav", "--channel", "65"], "argument --channel: '65': expected 1 to 64"),
    (["watch", "--broker", "mqtt://h", "--for", "nan"], "argument --for: 'nan': expected "
                                                        "above 0, up to 3.1536e+07 seconds"),
    (["watch", "--broker", "mqtt://h", "--for=-1"], "argument --for: '-1': expected above 0"),
    (["watch", "--broker", "mqtt://h", "--client-id", "w\nx"],
     "argument --client-id: 'w\\nx': control or invisible character '\\n'"),
    (["watch", "--broker", "mqtt://h", "--client-id", "c" * 70_000], "at most 128 allowed"),
    (["watch", "--broker", "mqtt://h", "--prefix", "harken/"], "empty topic level"),
    (["watch", "--broker", "mqtt://h", "--prefix", "\x1b]0;x\x07"], "control or invisible"),
    (["watch", "--broker", "mqtt://h", "--sparkplug-group", "a/b"], "character '/' at "
                                                                    "position 2 is not allowed"),
    (["enroll", "--config", "a.toml", "--machine", ".."], "argument --machine: '..': '..' "
                                                          "names a folder"),
    (["calibrate", "--config", "a.toml", "--machine", "fan\x00"], "control or invisible"),
    (["run", "--config=--"], "argument --config: expected one argument"),
])
def test_an_option_value_out_of_range_is_a_usage_error_naming_the_option(argv, message,
                                                                         capsys):
    """--threads 0, --threshold nan, --for -1 or a client id with a newline reached the
    command (a NaN verdict, a watch that never stops, a broker that drops the connection);
    ``--config=--`` handed the command an empty list (a TypeError traceback; found by the
    fuzz)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_empty_sparkplug_group_still_means_none(monkeypatch):
    """'' is watch's documented way to read no Sparkplug agents: the name check allows it."""
    from harken.agent.cli import build_parser
    args = build_parser().parse_args(["watch", "--broker", "mqtt://h", "--sparkplug-group", ""])
    assert args.sparkplug_group == ""
