"""Config overrides, the training loop's early stopping, and model-input preparation."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from torch import nn

from harken.agent.features import preset
from harken.training.config import TrainConfig, with_overrides
from harken.training.data.corpus import Clip
from harken.training.data.windows import (class_labels, class_sections, fit_to_window, stack_windows,
                                   validation_split)
from harken.training.trainer import fit, pick_device, plot_history


@dataclass(frozen=True)
class Cfg(TrainConfig):
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    bandwidth: str = "scott"
    ratio: float = 0.5


def test_overrides_are_typed_and_checked():
    c = with_overrides(Cfg(), ["epochs=3", "flag=yes", "mode=b", "ratio=0.25", "batch-size=8"])
    assert (c.epochs, c.flag, c.mode, c.ratio, c.batch_size) == (3, True, "b", 0.25, 8)
    for bad, msg in (("epochs=3.5", "expected int"), ("flag=maybe", "true or false"),
                     ("mode=c", "expected one of"), ("nope=1", "no such setting"),
                     ("epochs", "KEY=VALUE"), ("epochs=0", "at least 1"),
                     ("val_fraction=0.7", "val_fraction")):
        with pytest.raises(ValueError, match=msg):
            with_overrides(Cfg(), [bad])


def test_pick_device_explains_missing_cuda():
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu")


def test_fit_keeps_the_best_validation_epoch_and_stops_early(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 64).unsqueeze(1)
    val_losses = iter([5.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0])
    weights = []

    def val_loss():
        weights.append(model.weight.detach().clone())
        return next(val_losses)

    hist = fit(model, lambda epoch: [(x,)], lambda b: ((model(b[0]) - 2 * b[0]) ** 2).mean(),
               val_loss, TrainConfig(epochs=7, patience=3, lr=0.1), torch.device("cpu"),
               progress=False)
    assert hist.best_epoch == 1 and hist.stopped_early and len(hist.val_loss) == 5
    assert torch.equal(model.weight, weights[1])          # the best epoch's weights restored
    assert all(s > 0 for s in hist.samples_per_second)
    plot_history(hist, tmp_path / "loss.png", "test")
    assert (tmp_path / "loss.png").stat().st_size > 5_000


def test_fit_stops_on_a_non_finite_loss():
    model = nn.Linear(1, 1)
    with pytest.raises(FloatingPointError, match="lower lr"):
        fit(model, lambda e: [(torch.ones(2, 1),)], lambda b: model(b[0]).sum() * float("nan"),
            lambda: 0.0, TrainConfig(epochs=2), torch.device("cpu"), progress=False)


def clip(section, domain, index, machine="fan", **attrs):
    return Clip(Path(f"/x/{machine}/train/c{section}{domain}{index}.wav"), machine, section,
                domain, "train", "normal", index, attrs)


def test_validation_split_is_stratified_seeded_and_disjoint():
    clips = ([clip(s, "source", i) for s in (0, 1) for i in range(40)]
             + [clip(s, "target", i) for s in (0, 1) for i in range(5)])
    fit_idx, val_idx = validation_split(clips, 0.1, seed=3)
    assert sorted(fit_idx + val_idx) == list(range(len(clips)))
    groups = [(clips[i].section, clips[i].domain) for i in val_idx]
    assert groups.count((0, "source")) == 4 and groups.count((1, "target")) == 1
    assert validation_split(clips, 0.1, seed=3) == (fit_idx, val_idx)
    assert validation_split(clips, 0.1, seed=4)[1] != val_idx
    assert validation_split(clips, 0.0, seed=3) == (list(range(len(clips))), [])


def test_class_labels_cover_machine_section_and_attributes():
    clips = [clip(0, "source", 0, spd="1500"), clip(0, "source", 1, spd="1725"),
             clip(1, "target", 0, spd="1980"), clip(0, "source", 0, machine="valve", pat="00")]
    names, idx = class_labels(clips)
    assert names == ["fan/section_00_spd_1500", "fan/section_00_spd_1725",
                     "fan/section_01_spd_1980", "valve/section_00_pat_00"]
    assert idx.tolist() == [0, 1, 2, 3]
    assert class_sections(names, "fan").tolist() == [0, 0, 1, -1]


def test_short_clips_wrap_to_one_window_and_windows_stack():
    spec = preset("mobilenetv2")
    short = np.arange(10 * 128, dtype=np.float32).reshape(10, 128)
    filled = fit_to_window(short, spec)
    assert filled.shape == (64, 128) and np.array_equal(filled[10:20], short)
    long = np.zeros((100, 128), np.float32)
    x, owner = stack_windows([filled, long], spec)
    assert x.shape == (1 + 5, 64, 128) and owner.tolist() == [0, 1, 1, 1, 1, 1]


def test_source_scale_is_the_distance_of_an_unseen_clip_not_a_fitted_one():
    """Centres fitted on clips sit closer to them than to new clips from the same
    distribution; the source scale must be the new-clip figure (cross-fitted)."""
    from harken.training.classifier import ClassifierMethod, _typical_distance

    rng = np.random.default_rng(3)
    directions = rng.normal(size=(4, 64))

    def draw(n):
        z = directions[rng.integers(0, 4, n)] + 0.35 * rng.normal(size=(n, 64))
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    method = ClassifierMethod()
    seen, fresh = draw(100), draw(2000)
    centres = method._centres(seen)
    in_sample = _typical_distance(seen, centres, leave_one_out=False)
    unseen = float(np.median((1 - fresh @ centres.T).min(axis=1)))
    estimate = method._unseen_distance(seen)
    assert in_sample < 0.9 * unseen                 # the bias this guards against is real
    assert abs(estimate - unseen) < 0.1 * unseen


def test_every_method_satisfies_the_method_protocol_and_says_what_more_it_can_do():
    from harken.training.method import (Configurable, Localisable, Method, Refittable,
                                        ScoresAllRules)
    from harken.training.methods import METHODS
    from harken.training.methods import make_method
    for name, cls in METHODS.items():
        assert isinstance(make_method(name), Method), name
        assert cls.name == name and cls.score_rules and cls.summary
    assert {n for n, c in METHODS.items() if issubclass(c, Refittable)} == {
        "mobilenetv2", "mobilenetv2-dual", "contrastive"}
    assert {n for n, c in METHODS.items() if issubclass(c, Localisable)} == {"aegan-ad"}
    assert not issubclass(METHODS["baseline-knn"], Configurable)
    assert issubclass(METHODS["ae"], Configurable)
    assert {n for n, c in METHODS.items() if issubclass(c, ScoresAllRules)} >= {
        "aegan-ad", "gmgan", "oevae"}


def test_exportable_methods_name_an_agent_rule_and_give_its_arrays_and_graph():
    """What harken-export reads (training/method.py's Exportable): the device rule is one
    the agent has, and an untrained spectral-knn's graph holds one device window."""
    from harken.agent.model.manifest import OUTPUTS
    from harken.agent.model.rules import RULES
    from harken.training.method import DeviceGraph, Exportable
    from harken.training.methods import METHODS, make_method
    exportable = {n for n, c in METHODS.items() if issubclass(c, Exportable)}
    assert exportable == {"spectral-knn", "ae", "ae-mahalanobis", "ae-bu", "ae-snp",
                          "mobilenetv2", "mobilenetv2-dual", "contrastive",
                          "mobilenetv2-dual-general", "oevae", "aegan-ad", "gmgan"}
    for name in exportable:
        assert make_method(name).device_rule() in RULES, name
    knn = make_method("spectral-knn", ["score=plain"])
    assert knn.device_rule() == "spectral-knn" and "plain" in knn.score_rules
    graph = knn.device_graph()
    assert isinstance(graph, DeviceGraph) and set(graph.outputs) <= set(OUTPUTS)
    spec = knn.spec
    window = torch.zeros(graph.input_shape)
    assert graph.input_shape == (1, spec.window_frames * spec.n_features)
    assert tuple(graph.module(window).shape) == (1, 2 * spec.n_features)


def test_scoring_names_the_clip_of_an_untrained_section_but_lets_a_bug_through(monkeypatch):
    """Only the user's data (a clip of a section the run never saw) becomes a DataError
    naming the clip; any other ValueError is a bug and stays one."""
    import harken.training.autoencoder as ae_module
    from harken.common.errors import DataError
    from harken.training.autoencoder import AeMahalanobis

    method = AeMahalanobis()
    clip = Clip(Path("/data/fan/test/section_03_source_test_normal_0001.wav"), "fan", 3,
                "source", "test", "normal", 1)
    residual = np.zeros((2, method.spec.window_frames * method.spec.n_mels))
    with pytest.raises(DataError, match=r"section_03_source_test_normal_0001\.wav: section 03 "
                                        r"was not in the training data"):
        method._scores_from_residuals([residual], [clip], "mahalanobis")

    def broken(*args, **kwargs):
        raise ValueError("a bug, not the user's data")
    monkeypatch.setattr(ae_module, "make_rule", broken)
    with pytest.raises(ValueError, match="a bug") as err:
        method._scores_from_residuals([residual], [clip], "mse")
    assert not isinstance(err.value, DataError)
