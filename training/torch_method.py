"""What every torch-trained method shares: config with overrides, the run directory
(weights without pickle, run.json, loss plot), and loading back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from harken.common.errors import UsageError
from harken.common.readers import read_array
from harken.agent.features import FeatureSpec, preset
from harken.training.config import Caps, TrainConfig, config_dict, with_overrides
from harken.training.data.corpus import Clip
from harken.training.runs import RunError, RunInfo, normal_score_stats, read_run, write_run
from harken.training.trainer import History, pick_device, plot_history, seed_everything

WEIGHTS = "model.pt"
MIN_HELD_OUT = 3      # a gamma fit of normal scores needs a few validation clips; else all


class TorchMethod:
    name: ClassVar[str]
    preset_name: ClassVar[str]
    config_cls: ClassVar[type[TrainConfig]]
    score_rules: ClassVar[tuple[str, ...]]
    summary: ClassVar[str] = ""
    # trains through trainer.fit, so across processes too (training/distributed.py);
    # a method that does not says why in serial_reason
    data_parallel: ClassVar[bool] = True
    serial_reason: ClassVar[str] = ""

    def __init__(self, config: TrainConfig | None = None, overrides: list[str] | None = None,
                 spec: FeatureSpec | None = None) -> None:
        self.config = with_overrides(config or self.config_cls(), overrides)
        self.spec = spec or preset(self.preset_name)
        self.model: nn.Module | None = None
        self.info: RunInfo | None = None
        self.caps = Caps()          # settings the data made smaller (run.json params 'capped')

    @classmethod
    def default_settings(cls) -> dict:
        """Every setting and its default (what ``--set`` can change)."""
        import dataclasses
        return dataclasses.asdict(cls(cls.config_cls()).config)

    # -- to be provided by each method ---------------------------------------------------
    def architecture(self) -> dict:
        """Constructor arguments that rebuild the network (stored in run.json)."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    @property
    def default_rule(self) -> str:
        return getattr(self.config, "score")

    def check_rule(self, rule: str | None) -> str:
        rule = rule or self.default_rule
        if rule not in self.score_rules:
            raise UsageError(f"{self.name} has no score rule '{rule}'; choose one of "
                             f"{list(self.score_rules)}")
        return rule

    def setup(self) -> torch.device:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.generator = seed_everything(self.config.seed)
        return pick_device(self.config.device)

    def save(self, run_dir: Path, clips: Sequence[Clip], hist: History, normal_scores: np.ndarray,
             extra: dict, held_out_clips: Sequence[Clip] | None = None) -> RunInfo:
        """``held_out_clips``: the clips ``normal_scores`` are of, kept per clip (runs.py)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                   run_dir / WEIGHTS)
        plot_history(hist, run_dir / "loss.png", f"{self.name}, {clips[0].machine}")
        return write_run(run_dir, method=self.name, machine=clips[0].machine, spec=self.spec,
                         params={**config_dict(self.config), "score_rules": list(self.score_rules),
                                 **({"capped": dict(self.caps)} if self.caps else {})},
                         train_clips=clips, normal_scores=normal_score_stats(normal_scores),
                         held_out=None if held_out_clips is None
                         else (held_out_clips, normal_scores),
                         extra={"architecture": self.architecture(), "history": hist.to_dict(),
                                "weights": WEIGHTS, **extra})

    @classmethod
    def load(cls, run_dir: Path) -> TorchMethod:
        info = read_run(run_dir)
        if info.method != cls.name:
            raise RunError(f"{run_dir}: run of method '{info.method}', not '{cls.name}'")
        if info.architecture is None:
            raise RunError(f"{run_dir / 'run.json'}: missing field 'architecture'")
        params = {k: v for k, v in info.params.items() if k not in ("score_rules", "capped")}
        try:
            config = cls.config_cls(**params)
        except (TypeError, UsageError) as exc:
            raise RunError(f"{run_dir}/run.json: params do not fit {cls.name} ({exc})") from None
        self = cls(config, spec=FeatureSpec.from_dict(info.feature_spec, f"{run_dir}/run.json"))
        self.info = info
        self.caps = Caps(warn=False)
        self.model = self.build_from(info.architecture)
        path = run_dir / (info.weights or WEIGHTS)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise RunError(f"{path}: no such file (the run's weights)") from None
        except Exception as exc:        # pickle, zip and torch errors alike: a damaged file
            raise RunError(f"{path}: cannot read the run's weights ({_first_line(exc)})") from None
        self.model.load_state_dict(check_state(path, state, self.model.state_dict()))
        self.model.eval()
        self.load_extra(run_dir, info)
        return self

    def build_from(self, architecture: dict) -> nn.Module:
        raise NotImplementedError

    def load_extra(self, run_dir: Path, info: RunInfo) -> None:
        """Arrays beside the weights (covariances, embedding banks)."""


class ScoresEveryRule:
    """For methods whose score rules all read the same network outputs (the generative
    detectors): ``score`` and ``score_all`` from one pass over the clips, in chunks of
    ``score_chunk``; the method gives ``chunk_scores`` (rule -> scores of a few clips)."""
    score_chunk: ClassVar[int] = 32

    def chunk_scores(self, clips: Sequence[Clip]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def score(self, clips: Sequence[Clip], progress: bool = True, rule: str | None = None
              ) -> np.ndarray:
        return self.score_all(clips, progress)[self.check_rule(rule)]

    def score_all(self, clips: Sequence[Clip], progress: bool = True) -> dict[str, np.ndarray]:
        n = self.score_chunk
        out = {r: np.empty(len(clips)) for r in self.score_rules}
        for start in tqdm(range(0, len(clips), n), desc="scoring", unit=f"{n} clips",
                          disable=not progress, leave=False):
            part = clips[start:start + n]
            for r, v in self.chunk_scores(part).items():
                out[r][start:start + len(part)] = v
        return out


def check_state(path: Path, state: object, expected: dict[str, torch.Tensor]) -> dict:
    """``state`` as the weights of a network shaped as ``expected``: one line naming the
    first missing, extra or differently shaped tensor (a model.pt of another run's settings
    would otherwise give torch's message of one line per tensor)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunError(f"{path}: not a network's weights (a state_dict of tensors expected)")
    for key, want in expected.items():
        if key not in state:
            raise RunError(f"{path}: no tensor {key!r} (weights of another network than "
                           f"run.json's architecture; train again)")
        got = tuple(state[key].shape)
        if got != tuple(want.shape):
            raise RunError(f"{path}: tensor {key!r} has shape {list(got)}, run.json's "
                           f"architecture gives {list(want.shape)} (weights of a run with "
                           f"other settings; train again)")
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise RunError(f"{path}: tensor {key!r} holds NaN or infinite values")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise RunError(f"{path}: tensor {extra[0]!r} is not in run.json's architecture "
                       f"(weights of another network; train again)")
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else type(exc).__name__


def load_array(run_dir: Path, name: str) -> np.ndarray:
    return read_array(Path(run_dir) / name, error=RunError)


def batched(n: int, batch_size: int, generator: torch.Generator | None = None):
    """Index tensors covering range(n) in batches (shuffled when a generator is given)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]
