"""``harken-train synth`` writes only into an empty folder or its own earlier corpus
(recognised by its marker file), never over the user's recordings (docs/reliability.md,
workstation: corpora)."""

from __future__ import annotations

import json

import pytest

from harken.training import cli
from harken.training.synth.corpus import MARKER


def synth(capsys, out, *args: str) -> tuple[int, str]:
    code = cli.main(["synth", "--size", "tiny", "--machines", "fan", "--workers", "1", "--quiet",
                     "--out", str(out), *args])
    return code, capsys.readouterr().err


def test_synth_refuses_a_folder_of_the_users_recordings_and_touches_nothing(tmp_path, capsys):
    mine = tmp_path / "recordings" / "fan" / "train"
    mine.mkdir(parents=True)
    clip = mine / "section_00_source_train_normal_0000_spd_1500.wav"     # a name synth writes
    clip.write_bytes(b"my own recording")
    code, err = synth(capsys, tmp_path / "recordings")
    assert code == 2 and "did not write (your recordings?)" in err and "Traceback" not in err
    assert clip.read_bytes() == b"my own recording"
    assert sorted(p.name for p in (tmp_path / "recordings").rglob("*")) == sorted(["fan", "train", clip.name])


def test_synth_writes_a_new_or_empty_folder_and_replaces_its_own_corpus_without_a_mix(tmp_path, capsys):
    out = tmp_path / "corpus"
    out.mkdir()
    assert synth(capsys, out)[0] == 0 and (out / MARKER).is_file()
    first = sorted(p.name for p in out.rglob("*.wav"))
    assert synth(capsys, out, "--seed", "7")[0] == 0        # its own corpus: replaced
    again = sorted(p.name for p in out.rglob("*.wav"))
    assert len(again) == len(first) and again != first      # other attributes, no leftovers
    assert json.loads((out / "corpus.json").read_text())["seed"] == 7
    (out / MARKER).unlink()                                  # a corpus written before the marker
    assert synth(capsys, out)[0] == 0


def test_an_interrupted_synth_is_still_its_own(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert synth(capsys, out)[0] == 0
    (out / "corpus.json").unlink()                           # killed before the last write
    assert synth(capsys, out)[0] == 0


@pytest.mark.parametrize("args, says", [(["--workers", "0"], "--workers must be at least 1"),
                                        (["--workers", "-3"], "--workers must be at least 1"),
                                        (["--seed", "-1"], "--seed must be")])
def test_synth_arguments_out_of_range_are_one_line(tmp_path, capsys, args, says):
    code, err = synth(capsys, tmp_path / "c", *args)
    assert code == 2 and says in err and "Traceback" not in err


def test_synth_refuses_a_file_as_its_folder(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, err = synth(capsys, tmp_path / "f")
    assert code == 2 and "a file, not a folder" in err


def test_a_synth_killed_midway_leaves_a_corpus_train_and_evaluate_refuse_until_synth_again(
        tmp_path, capsys, monkeypatch):
    from harken.training.synth import corpus as synth_corpus
    out, runs = tmp_path / "corpus", tmp_path / "runs"
    assert synth(capsys, out)[0] == 0
    assert cli.main(["train", "--data", str(out), "--out", str(runs), "--quiet"]) == 0
    write, done = synth_corpus._write_one, []

    def killed_after_five(args):
        if len(done) == 5:
            raise KeyboardInterrupt          # as a kill would stop it: no cleanup of ours runs
        done.append(1)
        return write(args)
    monkeypatch.setattr(synth_corpus, "_write_one", killed_after_five)
    assert cli.main(["synth", "--size", "tiny", "--machines", "fan", "--workers", "1", "--quiet",
                     "--out", str(out), "--seed", "3"]) != 0
    monkeypatch.setattr(synth_corpus, "_write_one", write)
    capsys.readouterr()
    assert not (out / "corpus.json").exists() and len(list(out.rglob("*.wav"))) == 5
    code = cli.main(["train", "--data", str(out), "--out", str(tmp_path / "r2"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "an incomplete synthetic corpus" in err and "run synth again" in err, err
    code = cli.main(["evaluate", str(runs), "--no-plots", "--no-baseline", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "incomplete synthetic corpus" in err and "Traceback" not in err, err
    assert synth(capsys, out, "--seed", "3")[0] == 0        # synth again: replaced, whole
    assert cli.main(["train", "--data", str(out), "--out", str(tmp_path / "r2"), "--quiet"]) == 0
