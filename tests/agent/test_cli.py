import json

import numpy as np

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
