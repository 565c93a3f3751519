"""The held-out normal scores a run keeps per clip (training/runs.py), which fusion
standardises on: written by every method that fusion takes, read back exactly, and a
missing or damaged file refused by name."""

from pathlib import Path

import numpy as np
import pytest

from harken.training.data.corpus import Clip, scan
from harken.training.data.features import clip_logmels
from harken.training.methods import make_method
from harken.training.runs import HELD_OUT, RunError, read_held_out, write_held_out
from harken.training.spectral_knn import clip_statistics


def clip(name: str, section: int) -> Clip:
    return Clip(Path(name), "fan", section, "source", "train", "normal", 0)


def test_scores_round_trip_exactly(tmp_path):
    scores = np.array([0.1, -2.5e-17, 3.0000000000000004])
    write_held_out(tmp_path, [clip("a.wav", 0), clip("b, 2.wav", 1), clip("c.wav", 1)], scores)
    back = read_held_out(tmp_path)
    assert back == {"a.wav": (0, 0.1), "b, 2.wav": (1, -2.5e-17),
                    "c.wav": (1, 3.0000000000000004)}


def test_a_missing_or_damaged_file_is_refused_by_name(tmp_path):
    with pytest.raises(RunError, match=f"no {HELD_OUT}.*train it again"):
        read_held_out(tmp_path)
    (tmp_path / HELD_OUT).write_text("file,section,domain,score\na.wav,0,source\n")
    with pytest.raises(RunError, match=f"{HELD_OUT}: line 2 is not"):
        read_held_out(tmp_path)
    with pytest.raises(ValueError, match="2 held-out clips but 1 scores"):
        write_held_out(tmp_path, [clip("a.wav", 0), clip("b.wav", 0)], np.zeros(1))


def test_spectral_knn_keeps_every_training_clips_leave_one_out_score(tiny_corpus, tmp_path):
    clips = scan(tiny_corpus, ["fan"], "train")
    method = make_method("spectral-knn", ["score=fused"])     # fixed weights: fit() alone
    vectors = clip_statistics(clip_logmels(clips, method.spec, False), method.spec,
                              method.spec.n_mels)
    loo = method.fit(vectors, [c.section for c in clips])
    make_method("spectral-knn", ["score=fused"]).train(clips, tmp_path, progress=False)
    kept = read_held_out(tmp_path)
    assert list(kept) == [c.name for c in clips]
    np.testing.assert_allclose([kept[c.name][1] for c in clips], loo, rtol=1e-12)
