"""Settings checked by the shared validators of training/config.py that every method's
settings model uses: finite, in range, the unit named, one line naming the key; a value a
method caps is warned about and recorded as used; a diverging loss is one line
(docs/reliability.md, workstation: settings)."""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import pytest

from harken.common.errors import UsageError
from harken.training import cli
from harken.training.config import Bound, check_settings
from harken.training.method import Configurable
from harken.training.methods import METHODS
from tests.training.test_corpus_scan import corpus


def train(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["train", *args, "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("setting, key", [
    (["--set", "lr=nan"], "lr"), (["--set", "lr=inf"], "lr"), (["--set", "lr=-1e-3"], "lr"),
    (["--set", "weight_decay=-5"], "weight_decay"), (["--set", "threads=-1"], "threads"),
    (["--set", "hidden=0"], "hidden"), (["--seed", "-1"], "seed"), (["--set", "depth=-1"], "depth"),
    (["--set", "patience=-1"], "patience"), (["--set", "epochs=1e9"], "epochs"),
])
def test_a_setting_out_of_range_is_one_line_naming_the_key(tmp_path, capsys, setting, key):
    code, err = train(capsys, "--method", "ae", "--data", str(tmp_path / "none"),
                      "--out", str(tmp_path / "runs"), *setting)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"harken-train: error: {key} must be") or f"--set {key}=" in err
    assert not (tmp_path / "runs").exists()               # refused before any work


def test_the_message_names_the_range_and_the_unit(tmp_path, capsys):
    _, err = train(capsys, "--method", "ae", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                   "--set", "lr=nan")
    assert "lr must be a finite number above 0 (the optimiser's learning rate), got nan" in err


def _fields():
    for name, cls in sorted(METHODS.items()):
        if not issubclass(cls, Configurable) or name == "fusion":
            continue
        config = cls(overrides=None).config
        hints = typing.get_type_hints(type(config), include_extras=True)
        for f in dataclasses.fields(config):
            yield name, config, f.name, hints[f.name]


def test_every_method_settings_model_refuses_non_finite_and_out_of_range_values():
    """The validators are shared: every float setting of every method refuses nan and inf,
    every bounded one a value past its bound, each naming the key."""
    checked = 0
    for method, config, key, hint in _fields():
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
        bounds = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Bound)]
        bad = []
        if base is float:
            bad += [math.nan, math.inf, -math.inf]
        for b in bounds:
            if b.lo is not None:
                bad.append(b.lo if b.lo_open else b.lo - 1)
            if b.hi is not None:
                bad.append(b.hi if b.hi_open else b.hi + 1)
        for value in bad:
            value = int(value) if base is int else value
            with pytest.raises(UsageError, match=f"^{key} must be"):
                dataclasses.replace(config, **{key: value})
            checked += 1
    assert checked > 100


def test_params_of_the_wrong_type_are_refused_like_a_bad_setting():
    config = METHODS["ae"](overrides=None).config
    for key, value in (("hidden", "x"), ("lr", True), ("epochs", 2.5), ("objective", "magic")):
        with pytest.raises(UsageError, match=f"^{key} must be"):
            check_settings(dataclasses.replace(config, **{key: value}))


def test_a_k_the_data_caps_is_warned_about_and_recorded_as_used(tmp_path, capsys):
    root = corpus(tmp_path / "c", train=4)
    code, err = train(capsys, "--data", str(root), "--out", str(tmp_path / "runs"),
                      "--set", "density_k=100")
    assert code == 0, err
    assert "density_k=100 is more than the 3 other training clips of section 00; 3 used" in err
    params = json.loads((tmp_path / "runs" / "fan" / "run.json").read_text())["params"]
    assert params["capped"] == {"density_k": {"asked": 100, "used": 3}}


def test_a_diverging_loss_is_one_line_suggesting_a_lower_lr(tmp_path, capsys):
    root = corpus(tmp_path / "c", train=4)
    code, err = train(capsys, "--method", "ae", "--data", str(root), "--out", str(tmp_path / "r"),
                      "--set", "epochs=2", "--set", "lr=1e30", "--set", "hidden=8")
    assert code == 2 and "Traceback" not in err
    assert "training diverged (the loss became nan); lower lr" in err
