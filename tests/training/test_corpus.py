from pathlib import Path

import numpy as np
import pytest

from harken.training.data.corpus import (CorpusError, load, machine_types, parse_attributes,
                                         parse_clip_name, scan)


@pytest.mark.parametrize("name, split, expect", [
    ("section_00_source_train_normal_0001_car_A1_spd_28V_mic_1_noise_1.wav", "train",
     (0, "source", "normal", 1, {"car": "A1", "spd": "28V", "mic": "1", "noise": "1"})),
    ("section_02_target_test_anomaly_0042_noAttribute.wav", "test", (2, "target", "anomaly", 42, {})),
    ("section_01_source_test_normal_0003.wav", "test", (1, "source", "normal", 3, {})),
    ("section_03_target_test_0007_strength_1_ambient.wav", "test",
     (3, "target", None, 7, {"strength": "1", "ambient": ""})),
    ("section_04_0010.wav", "test", (4, "source", None, 10, {})),
    ("anomaly_id_06_00000012.wav", "test", (6, "source", "anomaly", 12, {})),
    ("normal_id_00_00000000.wav", "train", (0, "source", "normal", 0, {})),
    ("id_05_00000001.wav", "test", (5, "source", None, 1, {})),
])
def test_parse_names_of_every_dcase_year(name, split, expect):
    c = parse_clip_name(Path("/x/fan") / split / name, "fan", split)
    assert (c.section, c.domain, c.label, c.index, c.attributes) == expect
    assert c.machine == "fan" and c.split == split


def test_malformed_names_are_refused_with_the_file():
    with pytest.raises(CorpusError, match="recording_1.wav: not a DCASE clip name"):
        parse_clip_name("/x/fan/train/recording_1.wav", "fan", "train")
    with pytest.raises(CorpusError, match="says split 'test' but it lies in 'train/'"):
        parse_clip_name("/x/fan/train/section_00_source_test_normal_0000_a_1.wav", "fan", "train")


def test_attributes():
    assert parse_attributes("noAttribute") == {}
    assert parse_attributes("vel_500_ac_3") == {"vel": "500", "ac": "3"}


def test_scan_tiny_corpus(tiny_corpus):
    machines = machine_types(tiny_corpus)
    assert machines == ["bearing", "fan", "gearbox", "pump", "slider", "valve"]
    train = scan(tiny_corpus, ["fan"], split="train")
    test = scan(tiny_corpus, ["fan"], split="test")
    assert {c.split for c in train} == {"train"} and {c.label for c in train} == {"normal"}
    assert {c.label for c in test} == {"normal", "anomaly"}
    assert {c.domain for c in train} == {"source", "target"}
    assert all(c.attributes.get("spd") for c in train)
    x = load(train[0], 16000)
    assert x.dtype == np.float32 and x.size == 32000


def test_scan_errors(tmp_path, tiny_corpus):
    with pytest.raises(CorpusError, match="does not exist"):
        scan(tmp_path / "nope")
    with pytest.raises(CorpusError, match="no machine types found"):
        scan(tmp_path)
    with pytest.raises(CorpusError, match=r"machine type\(s\) \['drill'\] not in corpus"):
        scan(tiny_corpus, ["drill"])
    bad = tmp_path / "c" / "fan" / "train"
    bad.mkdir(parents=True)
    (bad / "section_00_source_train_normal_0000_a_1.wav").write_bytes(b"RIFFjunk")
    with pytest.raises(CorpusError, match=r"normal_0000_a_1.wav: damaged WAV \(not a WAV file"):
        scan(tmp_path / "c")
    clip = parse_clip_name(bad / "section_00_source_train_normal_0000_a_1.wav", "fan", "train")
    with pytest.raises(CorpusError, match="section_00_source_train_normal_0000_a_1.wav: not a readable WAV"):
        load(clip, 16000)
