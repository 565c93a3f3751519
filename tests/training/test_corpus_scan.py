"""The corpus scanner says what it sees: missing splits named, ``.wav`` whatever its case,
regular files only, anomalous train clips and damaged WAVs refused (or skipped and
counted), and a summary of what was passed over (docs/reliability.md, workstation:
corpora). Each corpus here is a few tiny clips made in the test."""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile

from harken.training import cli
from harken.training.data.corpus import (ANOMALOUS_TRAIN, DAMAGED, HIDDEN, NOT_A_FILE, OTHER,
                                         CorpusError, load, machine_types, parse_clip_name, scan,
                                         scan_corpus)

RATE = 16000


def wav(path: Path, seconds: float = 1.1, channels: int = 1, dtype=np.int16, seed: int = 0) -> Path:
    """A short noise clip (16-bit, or 8-bit with ``dtype=np.uint8``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, (int(seconds * RATE), channels))
    x = x[:, 0] if channels == 1 else x
    data = (x * 127 + 128).astype(np.uint8) if dtype == np.uint8 else (x * 32767).astype(np.int16)
    scipy.io.wavfile.write(path, RATE, data)
    return path


def name(i: int, split: str = "train", label: str = "normal", section: int = 0, ext: str = "wav") -> str:
    return f"section_{section:02d}_source_{split}_{label}_{i:04d}_a_1.{ext}"


def corpus(root: Path, train: int = 3, test: int = 2, machine: str = "fan") -> Path:
    for i in range(train):
        wav(root / machine / "train" / name(i), seed=i)
    for i in range(test):
        wav(root / machine / "test" / name(i, "test"), seed=10 + i)
        wav(root / machine / "test" / name(i, "test", "anomaly"), seed=20 + i)
    return root


def train_cli(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["train", *args, "--quiet"])
    return code, capsys.readouterr().err


# -- the cases of issue 38 --------------------------------------------------------------

def test_a_missing_split_folder_is_named_with_what_the_other_split_holds(tmp_path, capsys):
    root = tmp_path / "c"
    for i in range(16):
        wav(root / "fan" / "test" / name(i, "test"), seed=i)
    with pytest.raises(CorpusError, match=r"c/fan: no train/ folder \(its test/ holds 16 .wav clip"):
        scan(root, ["fan"], split="train")
    code, err = train_cli(capsys, "--data", str(root), "--out", str(tmp_path / "runs"))
    assert code == 2 and "no train/ folder" in err and "Traceback" not in err
    corpus(tmp_path / "d", test=0)                       # train/ only
    with pytest.raises(CorpusError, match=r"no test/ folder \(its train/ holds 3 .wav clip"):
        scan(tmp_path / "d", ["fan"], split="test")


def test_wav_clips_are_found_whatever_the_case_of_their_suffix(tmp_path):
    root = corpus(tmp_path / "c", train=0, test=0)
    for i in range(3):
        wav(root / "fan" / "train" / name(i, ext="WAV"), seed=i)
    wav(root / "fan" / "train" / name(3, ext="Wav"), seed=3)
    clips = scan(root, ["fan"], split="train")
    assert [c.index for c in clips] == [0, 1, 2, 3] and clips[0].name.endswith(".WAV")
    assert load(clips[0], RATE).size == int(1.1 * RATE)


def test_only_regular_files_are_clips(tmp_path):
    root = corpus(tmp_path / "c")
    train = root / "fan" / "train"
    (train / name(10)).mkdir()                               # a folder named like a clip
    os.mkfifo(train / name(11))                              # reading it would block forever
    (train / name(12)).symlink_to(train / "gone.wav")        # a broken link
    (train / name(13)).symlink_to(train / name(13))          # a link to itself (a loop)
    (train / name(14)).symlink_to(train / name(0))           # a link to a clip: a clip
    found = scan_corpus(root, ["fan"], split="train")
    assert [c.index for c in found.clips] == [0, 1, 2, 14]
    assert sorted(p.name for p in found.skipped[NOT_A_FILE]) == [name(i) for i in (10, 11, 12, 13)]
    assert found.summary()["skipped"][NOT_A_FILE] == 4


def test_train_clips_labelled_anomalous_are_refused_or_skipped_with_a_count(tmp_path, caplog):
    root = corpus(tmp_path / "c")
    wav(root / "fan" / "train" / name(7, label="anomaly"))
    with pytest.raises(CorpusError, match=r"anomaly_0007_a_1.wav: labelled anomalous in train/ "
                                          r"\(a normal reference must not be a fault\).*--skip-bad-clips"):
        scan(root, ["fan"], split="train")
    with caplog.at_level(logging.WARNING):
        clips = scan(root, ["fan"], split="train", skip_bad=True)
    assert len(clips) == 3 and not any(c.is_anomaly for c in clips)
    assert "skipped 1 clip(s), labelled anomalous in train/" in caplog.text
    assert len(scan(root, ["fan"], split="test")) == 4          # anomalies in test/ are the point


def test_a_wav_cut_short_is_refused_naming_it_or_skipped(tmp_path):
    root = corpus(tmp_path / "c")
    clip = root / "fan" / "train" / name(1)
    clip.write_bytes(clip.read_bytes()[:3000])                   # the header still says 8000 bytes
    with pytest.raises(CorpusError, match=r"normal_0001_a_1.wav: damaged WAV \(cut short: the header "
                                          r"says 35200 bytes of samples, the file holds 2956\)"):
        scan(root, ["fan"], split="train")
    found = scan_corpus(root, ["fan"], split="train", skip_bad=True)
    assert [c.index for c in found.clips] == [0, 2] and found.summary()["skipped"] == {DAMAGED: 1}
    # a damaged test clip: no flag to name (only training leaves clips out; was: 'pass
    # --skip-bad-clips' from evaluate and verify, which have no such flag)
    test_clip = sorted((root / "fan" / "test").glob("*.wav"))[0]
    test_clip.write_bytes(test_clip.read_bytes()[:3000])
    with pytest.raises(CorpusError, match=r"damaged WAV .*; repair or remove it$"):
        scan(root, ["fan"], split="test")


@pytest.mark.parametrize("keep", [40, 44])
def test_a_header_only_wav_is_one_line_in_training(tmp_path, capsys, keep):
    """40 bytes: scipy's reader raised struct.error; 44: a data chunk of no samples."""
    root = corpus(tmp_path / "c")
    clip = root / "fan" / "train" / name(0)
    clip.write_bytes(clip.read_bytes()[:keep])
    code, err = train_cli(capsys, "--data", str(root), "--out", str(tmp_path / "runs"))
    assert code == 2 and "Traceback" not in err
    assert f"{name(0)}: damaged WAV (header only" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(CorpusError, match=f"{name(0)}: (not a readable WAV|WAV file holds no samples)"):
        load(parse_clip_name(clip, "fan", "train"), RATE)       # the loader alone, too


def test_what_the_scan_skipped_is_logged_and_recorded_in_run_json(tmp_path, capsys):
    root = corpus(tmp_path / "c", train=6)
    wav(root / "fan" / "train" / name(8, label="anomaly"))
    short = root / "fan" / "train" / name(5)
    short.write_bytes(short.read_bytes()[:5000])
    (root / "fan" / "train" / "notes.txt").write_text("x")
    code, err = train_cli(capsys, "--data", str(root), "--out", str(tmp_path / "runs"),
                          "--skip-bad-clips")
    assert code == 0, err
    assert "skipped 1 clip(s), labelled anomalous in train/" in err
    assert f"skipped 1 clip(s), damaged WAV: fan/train/{name(5)} (cut short" in err
    scan_record = json.loads((tmp_path / "runs" / "fan" / "run.json").read_text())["corpus"]["scan"]
    assert scan_record["clips"] == 5 and scan_record["skipped"] == {
        OTHER: 1, ANOMALOUS_TRAIN: 1, DAMAGED: 1}
    assert scan_record["skipped_files"][DAMAGED] == [f"fan/train/{name(5)}"]


# -- our own hostile round ---------------------------------------------------------------

def test_stereo_and_8_bit_clips_are_read_and_the_stereo_ones_noted(tmp_path, caplog):
    root = corpus(tmp_path / "c", train=0, test=0)
    wav(root / "fan" / "train" / name(0), channels=2)
    wav(root / "fan" / "train" / name(1), dtype=np.uint8)
    with caplog.at_level(logging.INFO):
        found = scan_corpus(root, ["fan"], split="train")
        found.log()
    assert found.channels == {2: 1, 1: 1} and "1 clip(s) with more than one channel" in caplog.text
    stereo, eight = (load(c, RATE) for c in found.clips)
    assert stereo.ndim == 1 and stereo.size == int(1.1 * RATE)
    assert eight.dtype == np.float32 and 0.2 < np.abs(eight).max() <= 1.0


def test_a_machine_folder_name_with_spaces_and_a_folder_loop(tmp_path):
    root = corpus(tmp_path / "c", machine="my fan")
    (root / "loop").symlink_to(root, target_is_directory=True)    # root/loop/loop/... forever
    assert machine_types(root) == ["my fan"]
    assert {c.machine for c in scan(root, split="train")} == {"my fan"}


def test_many_empty_files_are_counted_quickly_and_empty_clips_refused_naming_one(tmp_path):
    root = corpus(tmp_path / "c")
    train = root / "fan" / "train"
    for i in range(10_000):
        (train / f"empty_{i}.txt").touch()
    t0 = time.monotonic()
    found = scan_corpus(root, ["fan"], split="train")
    assert time.monotonic() - t0 < 5 and len(found.skipped[OTHER]) == 10_000
    for i in range(100, 400):
        (train / name(i)).touch()
    with pytest.raises(CorpusError, match=r"normal_0100_a_1.wav: damaged WAV \(not a WAV file.*299 more"):
        scan(root, ["fan"], split="train")


def test_a_read_only_corpus_is_scanned_and_read_without_writing(tmp_path):
    root = corpus(tmp_path / "c")
    folders = [root, root / "fan", root / "fan" / "train", root / "fan" / "test"]
    for f in folders:
        f.chmod(0o555)
    try:
        before = sorted(p for p in root.rglob("*"))
        clips = scan(root, ["fan"], split="train")
        assert load(clips[0], RATE).size and sorted(p for p in root.rglob("*")) == before
    finally:
        for f in folders:
            f.chmod(0o755)


def test_a_file_name_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    root = corpus(tmp_path / "c")
    bad = os.fsencode(root / "fan" / "train") + b"/section_00_source_train_normal_0009_a_\xff.wav"
    with open(bad, "wb") as f:
        f.write((root / "fan" / "train" / name(0)).read_bytes())
    with pytest.raises(CorpusError, match="not UTF-8 text; rename the file"):
        scan(root, ["fan"], split="train")


def test_hidden_resource_forks_and_other_files_are_ignored_and_counted(tmp_path):
    root = corpus(tmp_path / "c")
    (root / "fan" / "train" / f"._{name(0)}").write_bytes(b"\0\5\26\7" * 20)    # macOS zips
    (root / "fan" / "train" / "clip.flac").write_bytes(b"fLaC")
    found = scan_corpus(root, ["fan"], split="train")
    assert len(found.clips) == 3 and found.summary()["skipped"] == {HIDDEN: 1, OTHER: 1}


def test_two_files_for_one_clip_name_differing_in_case_are_refused(tmp_path):
    root = corpus(tmp_path / "c")
    wav(root / "fan" / "train" / name(0, ext="WAV"))
    with pytest.raises(CorpusError, match="names differ only in case"):
        scan(root, ["fan"], split="train")


def test_a_streamed_wav_with_an_unknown_data_size_is_accepted(tmp_path):
    root = corpus(tmp_path / "c")
    clip = root / "fan" / "train" / name(0)
    data = bytearray(clip.read_bytes())
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)        # what a recorder writes before it stops
    clip.write_bytes(bytes(data))
    assert len(scan(root, ["fan"], split="train")) == 3


def test_an_8_khz_clip_is_resampled_with_one_warning_and_a_nan_clip_refused(tmp_path, caplog,
                                                                           monkeypatch):
    from harken.agent.sources import wavio
    monkeypatch.setattr(wavio, "_warned_rates", set())        # warned once per process
    root = corpus(tmp_path / "c", train=0, test=0)
    (root / "fan" / "train").mkdir(parents=True)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 8800).astype(np.float32)
    scipy.io.wavfile.write(root / "fan" / "train" / name(0), 8000, (x * 32767).astype(np.int16))
    x[100] = np.nan
    scipy.io.wavfile.write(root / "fan" / "train" / name(1), 16000, x)       # a float WAV
    clips = scan(root, ["fan"], split="train")
    with caplog.at_level(logging.WARNING):
        assert load(clips[0], RATE).size == 17600
    assert "recorded at 8000 Hz, the model expects 16000 Hz" in caplog.text
    with pytest.raises(CorpusError, match=f"{name(1)}: WAV file holds NaN or infinite samples"):
        load(clips[1], RATE)


def test_a_clip_shorter_than_a_window_and_a_unicode_machine_name(tmp_path, capsys):
    root = corpus(tmp_path / "c", machine="Lüfter")
    wav(root / "Lüfter" / "train" / name(5), seconds=0.001)
    code, err = train_cli(capsys, "--data", str(root), "--out", str(tmp_path / "runs"))
    assert code == 2 and "Traceback" not in err
    assert name(5) in err and "shorter than one" in err
    (root / "Lüfter" / "train" / name(5)).unlink()
    code, err = train_cli(capsys, "--data", str(root), "--out", str(tmp_path / "runs"))
    assert code == 0, err
    run = json.loads((tmp_path / "runs" / "Lüfter" / "run.json").read_text())
    assert run["machine"] == "Lüfter"
