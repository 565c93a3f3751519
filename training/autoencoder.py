"""The DCASE dense autoencoder and its variants: plain MSE training (``ae``), the selective
Mahalanobis score (``ae-mahalanobis``), batch uniformization (``ae-bu``) and the
simplified Neyman-Pearson objective with pseudo-anomalies (``ae-snp``).

Every run fits both scores (mse, mahalanobis), so ``evaluate --score`` can compare them
without retraining; the method name only sets the training objective and the default.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from harken.common.errors import DataError, UsageError
from harken.agent.model.rules import ScoreRule, make_rule
from harken.training.run_checks import check_rule_arrays
from harken.training.augment import smote_target
from harken.training.augment.mixing import mix_logmel
from harken.training.config import Decibels, Rate, at_least, TrainConfig
from harken.training.data.corpus import Clip
from harken.training.data.pseudo_anomalies import pseudo_anomaly_pool
from harken.training.data.windows import ae_vectors, clip_features, validation_split
from harken.training.method import DeviceGraph, WindowOutputs
from harken.training.models.dense_ae import DenseAE, per_sample_mse
from harken.training.models.losses import kde_weights, snp_loss, weighted_mean
from harken.training.runs import RunInfo
from harken.training.torch_method import MIN_HELD_OUT, TorchMethod, batched, load_array
from harken.training.trainer import fit

DOMAINS = ("source", "target")


@dataclass(frozen=True)
class AeConfig(TrainConfig):
    epochs: int = 40
    batch_size: int = 256
    hidden: Annotated[int, at_least(1, "units per hidden layer")] = 128
    bottleneck: Annotated[int, at_least(1, "units")] = 8
    depth: Annotated[int, at_least(1, "hidden layers per side")] = 4
    objective: Literal["mse", "bu", "snp"] = "mse"
    score: Literal["mse", "mahalanobis"] = "mse"
    bu_bandwidth: str = "scott"       # Scott's rule, or a number (standardised units)
    bu_eps: Rate = 1e-3
    snp_clip: Rate = 4.0             # C, as a multiple of the batch's mean normal score
    snp_anr_min_db: Decibels = -20.0     # pseudo-anomaly to normal power ratio, drawn uniformly
    snp_anr_max_db: Decibels = 0.0
    smote: bool = False               # fill the target domain's vectors up to the source count

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bu_bandwidth != "scott":
            try:
                ok = float(self.bu_bandwidth) > 0
            except ValueError:
                ok = False
            if not ok:
                raise UsageError(f"bu_bandwidth must be 'scott' or a positive number, "
                                 f"got '{self.bu_bandwidth}'")
        if self.snp_anr_min_db > self.snp_anr_max_db:
            raise UsageError(f"snp_anr_min_db ({self.snp_anr_min_db}) is above snp_anr_max_db "
                             f"({self.snp_anr_max_db})")


class AutoencoderMethod(TorchMethod):
    name = "ae"
    preset_name = "dcase2020-ae"
    config_cls = AeConfig
    score_rules = ("mse", "mahalanobis")
    summary = "DCASE baseline dense AE, MSE training, MSE score"
    defaults: dict = {}

    def __init__(self, config=None, overrides=None, spec=None) -> None:
        if config is None:
            config = AeConfig(**self.defaults)
        super().__init__(config, overrides, spec)
        self.maha: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}

    def architecture(self) -> dict:
        c = self.config
        return {"input_dim": self.spec.window_frames * self.spec.n_mels, "hidden": c.hidden,
                "bottleneck": c.bottleneck, "depth": c.depth}

    def build_from(self, architecture: dict) -> DenseAE:
        return DenseAE(**architecture)

    # -- training ----------------------------------------------------------------------------
    def train(self, clips: Sequence[Clip], run_dir: Path, progress: bool = True) -> RunInfo:
        cfg = self.config
        device = self.setup()
        feats = clip_features(clips, self.spec, progress)
        fit_idx, val_idx = validation_split(clips, cfg.val_fraction, cfg.seed)
        x_fit, owner = ae_vectors([feats[i] for i in fit_idx], self.spec)
        if cfg.smote:
            x_fit = np.concatenate([x_fit, self._smote_target(x_fit, owner, [clips[i] for i in fit_idx])])
        x_val, _ = ae_vectors([feats[i] for i in val_idx] or [feats[i] for i in fit_idx], self.spec)
        xt = torch.from_numpy(x_fit).to(device)
        xv = torch.from_numpy(x_val).to(device)
        self.model = DenseAE(**self.architecture()).to(device)
        loss_fn = self._loss(device, clips, progress)

        def batches(epoch: int):
            for idx in batched(len(xt), cfg.batch_size, self.generator):
                if len(idx) > 1:          # BatchNorm needs two samples
                    yield (xt[idx.to(device)],)

        def val_loss() -> float:
            return float(np.mean([per_sample_mse(xv[i], self.model(xv[i])).mean().item()
                                  for i in batched(len(xv), 4096)]))

        hist = fit(self.model, batches, loss_fn, val_loss, cfg, device, progress,
                   desc=f"{self.name} {clips[0].machine}")
        self.model.cpu()
        residuals_by_clip = self._residuals([feats[i] for i in fit_idx])
        self._fit_mahalanobis(residuals_by_clip, [clips[i] for i in fit_idx])
        held_out = val_idx if len(val_idx) >= MIN_HELD_OUT else list(range(len(clips)))
        normal = self._scores_from_residuals(self._residuals([feats[i] for i in held_out]),
                                             [clips[i] for i in held_out], self.default_rule)
        run_dir.mkdir(parents=True, exist_ok=True)
        for (section, domain), (mean, precision) in self.maha.items():
            np.save(run_dir / f"maha_section_{section:02d}_{domain}_mean.npy", mean)
            np.save(run_dir / f"maha_section_{section:02d}_{domain}_precision.npy", precision)
        return self.save(run_dir, clips, hist, normal,
                         {"mahalanobis": [[s, d] for s, d in self.maha],
                          "normal_scores_from": "validation clips" if held_out is val_idx
                          else "all training clips (too few validation clips)"},
                         held_out_clips=[clips[i] for i in held_out])

    def _loss(self, device: torch.device, clips: Sequence[Clip], progress: bool):
        cfg = self.config
        if cfg.objective == "mse":
            return lambda b: per_sample_mse(b[0], self.model(b[0])).mean()
        if cfg.objective == "bu":
            bw = cfg.bu_bandwidth if cfg.bu_bandwidth == "scott" else float(cfg.bu_bandwidth)
            return lambda b: weighted_mean(per_sample_mse(b[0], self.model(b[0])),
                                           kde_weights(b[0], bw, cfg.bu_eps))
        pool_feats, _ = pseudo_anomaly_pool(list(clips), self.spec, cfg.seed, progress=progress)
        pool = torch.from_numpy(ae_vectors(pool_feats, self.spec)[0]).to(device)
        db_per_decade = 20.0 / self.spec.power

        def snp(b):
            x = b[0]
            half = max(2, len(x) // 2)
            other = pool[torch.randint(0, len(pool), (half,), generator=self.generator).to(device)]
            anr = cfg.snp_anr_min_db + (cfg.snp_anr_max_db - cfg.snp_anr_min_db) * torch.rand(
                half, generator=self.generator).to(device)
            pseudo = mix_logmel(x[:half], other, anr, db_per_decade)
            a = per_sample_mse(torch.cat([x, pseudo]), self.model(torch.cat([x, pseudo])))
            a_normal, a_pseudo = a[:len(x)], a[len(x):]
            return snp_loss(a_normal, a_pseudo, cfg.snp_clip * a_normal.detach().mean())
        return snp

    def _smote_target(self, x: np.ndarray, owner: np.ndarray, clips: Sequence[Clip]) -> np.ndarray:
        section = np.array([clips[o].section for o in owner])
        target = np.array([clips[o].domain == "target" for o in owner])
        return smote_target(x, section, section, target,
                            np.random.default_rng(self.config.seed))[0]

    # -- scoring -----------------------------------------------------------------------------
    def _residuals(self, feats: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per clip: (vectors, dims) reconstruction residual x - AE(x)."""
        out = []
        with torch.no_grad():
            for m in feats:
                x = torch.from_numpy(ae_vectors([m], self.spec)[0])
                out.append((x - self.model(x)).numpy())
        return out

    def _fit_mahalanobis(self, residuals: list[np.ndarray], clips: Sequence[Clip]) -> None:
        """Residual mean and (Ledoit-Wolf shrunk) precision per section and domain."""
        self.maha = {}
        for section in sorted({c.section for c in clips}):
            for domain in DOMAINS:
                r = [res for res, c in zip(residuals, clips)
                     if c.section == section and c.domain == domain]
                if r:
                    lw = LedoitWolf().fit(np.concatenate(r).astype(np.float64))
                    self.maha[(section, domain)] = (lw.location_, lw.precision_)

    # -- export (training/method.py's Exportable) ------------------------------------------
    def device_graph(self) -> DeviceGraph:
        return DeviceGraph(self.model.eval(), (1, self.spec.window_frames * self.spec.n_mels),
                           ("reconstruction",))

    def device_rule(self) -> str:
        return self.default_rule         # both of its scores are agent rules

    def rule_arrays(self, section: int, rule: str | None = None) -> dict[str, np.ndarray]:
        """What agent/model/rules/ needs to score ``section`` with ``rule`` (the device
        rule without one: export ships that)."""
        rule = rule or self.device_rule()
        if rule == "mse":
            return {}
        fitted = [self.maha[(section, d)] for d in DOMAINS if (section, d) in self.maha]
        if not fitted:
            raise DataError(f"section {section:02d} was not in the training data")
        return {"means": np.stack([m for m, _ in fitted]),
                "precisions": np.stack([p for _, p in fitted])}

    def refit_rule_arrays(self, clips: Sequence[Clip], outputs: Sequence[WindowOutputs]
                          ) -> dict[int, dict[str, np.ndarray]] | None:
        """The selective Mahalanobis rule's means and precisions (training/method.py
        ``RefitsRuleArrays``) as ``_fit_mahalanobis`` fits them, on the artifact's residuals
        (its input minus its reconstruction) of the fit clips, the split training used;
        ``mse`` holds no statistics."""
        if self.device_rule() != "mahalanobis":
            return None
        fit_idx, _ = validation_split(clips, self.config.val_fraction, self.config.seed)
        residuals = [outputs[i]["input"] - outputs[i]["reconstruction"] for i in fit_idx]
        twin = copy.copy(self)          # the run's own statistics stay as they are
        twin._fit_mahalanobis(residuals, [clips[i] for i in fit_idx])
        return {s: twin.rule_arrays(s) for s in sorted({s for s, _ in twin.maha})}

    def _scores_from_residuals(self, residuals: list[np.ndarray], clips: Sequence[Clip],
                               rule: str) -> np.ndarray:
        """Clip scores through the device's own rule (agent/model/rules/)."""
        rules: dict[int, ScoreRule] = {}
        out = np.empty(len(clips))
        for i, (r, c) in enumerate(zip(residuals, clips)):
            if c.section not in rules:
                try:
                    rules[c.section] = make_rule(rule, self.rule_arrays(c.section, rule))
                except DataError as exc:     # a section the run was not trained on: name the clip
                    raise DataError(f"{c.path}: {exc}") from None
            out[i] = rules[c.section].reduce(rules[c.section].residual_evidence(r))
        return out

    def score(self, clips: Sequence[Clip], progress: bool = True, rule: str | None = None
              ) -> np.ndarray:
        rule = self.check_rule(rule)
        feats = clip_features(clips, self.spec, progress, desc=f"scoring ({rule})")
        return self._scores_from_residuals(self._residuals(feats), clips, rule)

    def load_extra(self, run_dir: Path, info: RunInfo) -> None:
        self.maha = {}
        for section, domain in info.mahalanobis or []:
            stem = f"maha_section_{int(section):02d}_{domain}"
            self.maha[(int(section), domain)] = (load_array(run_dir, f"{stem}_mean.npy"),
                                                 load_array(run_dir, f"{stem}_precision.npy"))
        if self.maha:
            width = self.spec.window_frames * self.spec.n_mels
            check_rule_arrays(sorted({int(s) for s, _ in info.mahalanobis or []}), "mahalanobis",
                              lambda s: self.rule_arrays(s, "mahalanobis"),
                              lambda s: run_dir / f"maha_section_{s:02d}_*.npy", width)


class AeMahalanobis(AutoencoderMethod):
    name = "ae-mahalanobis"
    summary = "dense AE, MSE training, selective Mahalanobis score (min over domains)"
    defaults = {"score": "mahalanobis"}


class AeBatchUniformization(AutoencoderMethod):
    name = "ae-bu"
    summary = "dense AE trained with batch uniformization (KDE-weighted MSE)"
    defaults = {"objective": "bu"}


class AeNeymanPearson(AutoencoderMethod):
    name = "ae-snp"
    summary = "dense AE trained with the simplified Neyman-Pearson loss on pseudo-anomalies"
    defaults = {"objective": "snp"}
