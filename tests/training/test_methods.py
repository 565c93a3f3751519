"""Every trained method on the tiny corpus: it trains, saves a loadable run, and scores an
easy held-out anomaly set clearly better than chance."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from training.data.corpus import scan
from training.methods import METHODS, make_method, settings

# Small but real settings: the tiny corpus has 20 two-second clips per machine type.
FAST = {
    "ae": ["epochs=30", "batch_size=32"],
    "ae-mahalanobis": ["epochs=30", "batch_size=32"],
    "ae-bu": ["epochs=30", "batch_size=32"],
    "ae-snp": ["epochs=30", "batch_size=32"],
    "mobilenetv2": ["epochs=25", "width=0.35", "batch_size=16"],
    "contrastive": ["epochs=25", "width=0.35", "batch_size=16"],
}


@pytest.fixture(scope="module")
def fan_train(tiny_corpus):
    return scan(tiny_corpus, ["fan"], "train")


@pytest.mark.parametrize("name", sorted(FAST))
def test_method_trains_saves_and_detects_easy_anomalies(name, fan_train, easy_test_set, tmp_path):
    clips, labels = easy_test_set
    run = tmp_path / name / "fan"
    info = make_method(name, FAST[name]).train(fan_train, run, progress=False)

    saved = json.loads((run / "run.json").read_text())
    assert saved["method"] == name and saved["params"]["seed"] == 0
    assert saved["feature_spec"] == info["feature_spec"]
    assert saved["history"]["train_loss"] and np.isfinite(saved["history"]["val_loss"]).all()
    assert (run / "loss.png").stat().st_size > 5_000
    state = torch.load(run / "model.pt", weights_only=True)       # plain tensors, no pickle
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    model = METHODS[name].load(run)
    for rule in model.score_rules:
        scores = model.score(clips, progress=False, rule=rule)
        assert scores.shape == (len(clips),) and np.isfinite(scores).all()
    auc = roc_auc_score(labels, model.score(clips, progress=False))
    assert auc >= 0.8, f"{name}: AUC {auc:.3f} on easy anomalies"


def test_training_is_deterministic_for_a_seed(fan_train, tmp_path):
    a = make_method("ae", ["epochs=2"]).train(fan_train, tmp_path / "a", progress=False)
    b = make_method("ae", ["epochs=2"]).train(fan_train, tmp_path / "b", progress=False)
    assert a["history"]["train_loss"] == b["history"]["train_loss"]
    c = make_method("ae", ["epochs=2", "seed=3"]).train(fan_train, tmp_path / "c", progress=False)
    assert c["history"]["train_loss"] != a["history"]["train_loss"]


def test_augmentation_switches_train(fan_train, tmp_path):
    info = make_method("mobilenetv2", ["epochs=2", "width=0.35", "smote=true", "median_p=1",
                                       "mixup_alpha=0.4", "frame_shift=4"]).train(
        fan_train, tmp_path / "aug", progress=False)
    assert info["params"]["smote"] and info["params"]["median_p"] == 1.0
    ae = make_method("ae", ["epochs=2", "smote=true"]).train(fan_train, tmp_path / "ae",
                                                             progress=False)
    assert ae["params"]["smote"]


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="no such setting"):
        make_method("ae", ["widht=3"])
    with pytest.raises(ValueError, match="width must be one of"):
        make_method("mobilenetv2", ["width=0.6"])
    with pytest.raises(ValueError, match="expected one of"):
        make_method("ae", ["objective=magic"])
    with pytest.raises(ValueError, match="no settings"):
        make_method("baseline-knn", ["k=3"])
    assert settings("contrastive")["ntxent_weight"] == 0.0005
    assert settings("contrastive")["temperature"] == 0.07


def test_unknown_score_rule_is_refused(fan_train, tmp_path, easy_test_set):
    make_method("ae", ["epochs=1"]).train(fan_train, tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="no score rule 'logit'"):
        METHODS["ae"].load(tmp_path / "r").score(easy_test_set[0], progress=False, rule="logit")
