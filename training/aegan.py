"""AEGAN-AD (Jiang et al., ICASSP 2023): a convolutional autoencoder trained as the generator
of a WGAN-GP, so that the discriminator learns what normal spectrograms look like and the
generator reconstructs them; anomalies are read from both.

Input: log-mel (n_fft 2048, hop 512, 128 mels) in dB, scaled to [-1, 1] with the training
set's min/max, cut into 128 x 128 patches (hop 32 frames). Generator loss = MSE(x, G(x)) +
fm_weight * feature matching of discriminator embeddings (mean, and std by default);
discriminator: Wasserstein critic with gradient penalty (weight 10, n_critic 1); Adam 2e-4,
beta1 0.5.

Scores (every run fits all of them; ``evaluate --score`` picks one), each a clip mean over
its patches or a distance of the clip's mean discriminator embedding:

* ``x-l1``, ``x-l2``, ``x-cos``: reconstruction error in sample space,
* ``z-l1``, ``z-l2``, ``z-cos``: between the encodings of the patch and of its reconstruction,
* ``d-maha``: Mahalanobis distance of the embedding to the section's training mean,
* ``d-knn``: mean cosine distance to the 2 nearest training embeddings of the section,
* ``d-lof``: local outlier factor among the section's training embeddings.

The default ``score=auto`` is chosen without test labels: the rule that best separates the
held-out normal training clips from pseudo-anomalous copies of them (other machine types and
pink noise mixed in, training/data/pseudo_anomalies.py).

A run exports (docs/export.md "AEGAN-AD"): its device graph computes only what the chosen
score reads (``AeganDevice``), and the device rule ``aegan-<score>`` scores it as here.

The paper's discriminator ends in a 512-d embedding (``channels=32``); the default is
``channels=16`` (256-d, about 3x faster), so that a machine type trains in a few minutes on
two CPU cores.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf
from sklearn.neighbors import LocalOutlierFactor

from harken.agent.features import PRESETS, preset
from harken.common.errors import DataError, UsageError
from harken.training.config import Count, Decibels, TrainConfig, Weight, between
from harken.training.data.corpus import Clip
from harken.training.data.pseudo_anomalies import choose_rule, pseudo_anomalous, pseudo_anomaly_pool
from harken.training.data.windows import as_images, clip_features, stack_windows, validation_split
from harken.training.method import DeviceGraph, WindowOutputs, clip_means
from harken.training.models.aegan import Aegan, AeganDevice
from harken.training.models.losses import feature_matching, gradient_penalty
from harken.training.runs import RunError, RunInfo
from harken.training.torch_method import (MIN_HELD_OUT, ScoresEveryRule, TorchMethod, batched,
                                   load_array)
from harken.training.trainer import check_finite, fit_steps

PATCH_RULES = ("x-l1", "x-l2", "x-cos", "z-l1", "z-l2", "z-cos")
EMBEDDING_RULES = ("d-maha", "d-knn", "d-lof")
RULES = PATCH_RULES + EMBEDDING_RULES


@dataclass(frozen=True)
class AeganConfig(TrainConfig):
    epochs: int = 8
    batch_size: int = 32
    lr: float = 2e-4
    beta1: Annotated[float, between(0, 1, "Adam beta1", hi_open=True)] = 0.5
    patience: int = 4
    channels: Count = 16               # first pyramid layer; embedding = channels * 16
    latent: Count = 256
    gp_weight: Weight = 10.0
    n_critic: Count = 1
    fm_weight: Weight = 1.0
    fm_std: bool = True               # feature matching also on the batch std
    knn_k: Count = 2
    lof_neighbors: Count = 10
    score: str = "auto"               # auto, or one of RULES
    pseudo_anr_min_db: Decibels = -20.0  # pseudo-anomalies for score=auto
    pseudo_anr_max_db: Decibels = 0.0
    # the feature preset whose frames the patches are cut from (n_mels x n_mels, hop 32): an
    # other method's, so that a fused bundle shares one front end with it (docs/export.md)
    frames: str = "aegan-ad"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score not in ("auto", *RULES):
            raise UsageError(f"score must be auto or one of {list(RULES)}, got '{self.score}'")
        if self.frames not in PRESETS:
            raise UsageError(f"frames must be a feature preset, one of {sorted(PRESETS)}; "
                             f"got '{self.frames}'")
        for name in ("channels", "latent", "n_critic", "knn_k", "lof_neighbors"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")


def square_patches(method: TorchMethod, clips: Sequence[Clip], progress: bool
                   ) -> tuple[list[np.ndarray], list[int], list[int], np.ndarray, np.ndarray]:
    """What AEGAN-AD and GMGAN train on: the clips' log-mels, the fit/validation split, the
    fit and validation patches (dB); sets ``method.low``/``high`` to the fit patches' range
    (the [-1, 1] scaling their Tanh generators need)."""
    spec = method.spec
    if spec.n_mels != spec.window_frames:
        raise UsageError(f"{method.name} needs square patches; the feature spec has "
                         f"{spec.n_mels} mels and {spec.window_frames}-frame windows")
    feats = clip_features(clips, spec, progress)
    fit_idx, val_idx = validation_split(clips, method.config.val_fraction, method.config.seed)
    x_fit, _ = stack_windows([feats[i] for i in fit_idx], spec)
    x_val, _ = stack_windows([feats[i] for i in (val_idx or fit_idx)], spec)
    method.low, method.high = float(x_fit.min()), float(x_fit.max())
    return feats, fit_idx, val_idx, x_fit, x_val


class AeganMethod(ScoresEveryRule, TorchMethod):
    name = "aegan-ad"
    # two optimisers stepped by the method itself (trainer.fit_steps): not data parallel
    data_parallel = False
    serial_reason = ("trains with its own optimiser steps (a GAN's two players), which the "
                     "distributed loop does not cover")
    preset_name = "aegan-ad"
    config_cls = AeganConfig
    score_rules = RULES
    summary = "AEGAN-AD: conv AE as a WGAN-GP generator; reconstruction and critic-embedding scores"

    def __init__(self, config=None, overrides=None, spec=None) -> None:
        super().__init__(config, overrides, spec)
        if spec is None and self.config.frames != self.preset_name:
            own, base = self.spec, preset(self.config.frames)
            self.spec = base.replace(spectrum=False, window_frames=base.n_mels,
                                     window_hop=own.window_hop,
                                     name=f"{self.preset_name}@{base.name}")
        self.chosen = ""
        self.embedding_bank: dict[int, np.ndarray] = {}

    @property
    def default_rule(self) -> str:
        return self.chosen or (self.config.score if self.config.score != "auto" else "x-l2")

    def architecture(self) -> dict:
        return {"size": self.spec.n_mels, "channels": self.config.channels,
                "latent": self.config.latent, "low": self.low, "high": self.high}

    def build_from(self, architecture: dict) -> Aegan:
        return Aegan(**architecture)

    # -- training ----------------------------------------------------------------------------
    def train(self, clips: Sequence[Clip], run_dir: Path, progress: bool = True) -> RunInfo:
        cfg = self.config
        device = self.setup()
        feats, fit_idx, val_idx, x_fit, x_val = square_patches(self, clips, progress)
        self._check_lof_bank(clips, fit_idx)
        net = Aegan(**self.architecture()).to(device)
        self.model = net
        xt, xv = net.scale(as_images(x_fit)), net.scale(as_images(x_val))
        gen, disc = net.generator, net.discriminator
        opt_g = torch.optim.Adam(gen.parameters(), cfg.lr, betas=(cfg.beta1, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), cfg.lr, betas=(cfg.beta1, 0.999))
        desc = f"{self.name} {clips[0].machine}"

        def batches(epoch: int):
            for idx in batched(len(xt), cfg.batch_size, self.generator):
                if len(idx) > 1:
                    yield (xt[idx].to(device),)

        def step(batch) -> torch.Tensor:
            x = batch[0]
            for _ in range(cfg.n_critic):
                fake = gen(x).detach()
                critic = disc(fake).mean() - disc(x).mean()
                loss_d = critic + cfg.gp_weight * gradient_penalty(disc, x, fake, self.generator)
                check_finite(loss_d, desc)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
            fake = gen(x)
            loss_g = F.mse_loss(fake, x) + cfg.fm_weight * feature_matching(
                disc.embed(x).detach(), disc.embed(fake), cfg.fm_std)
            check_finite(loss_g, desc)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            return loss_g.detach()

        def val_loss() -> float:
            return float(np.mean([F.mse_loss(gen(xv[i].to(device)), xv[i].to(device)).item()
                                  for i in batched(len(xv), 128)]))

        hist = fit_steps(net, batches, step, val_loss, cfg, device, progress, desc)
        self.model = net.cpu().eval()
        parts = self._clip_parts(feats)
        normal, extra, held = self._fit_scoring(clips, feats, parts, fit_idx, val_idx, progress)
        self._save_scoring(run_dir, feats)
        return self.save(run_dir, clips, hist, normal, extra, held)

    def _check_lof_bank(self, clips: Sequence[Clip], fit_idx: Sequence[int]) -> None:
        """score=d-lof is refused before any training when a section has too few fit clips:
        a local outlier factor on fewer than 3 embeddings scores every clip 0, and the run
        would fail later on 'all normal scores are equal', which names no cause."""
        if self.config.score != "d-lof":
            return
        fit = [clips[i].section for i in fit_idx]
        for s in sorted({c.section for c in clips}):
            n = fit.count(s)
            if n < 3:
                total = sum(c.section == s for c in clips)
                raise DataError(f"score=d-lof needs at least 3 training clips per section to "
                                f"fit its local outlier factor on; section {s:02d} has {n} "
                                f"after the validation split (of its {total}): add normal "
                                f"clips of section {s:02d}, or train with another score "
                                f"(--set score=d-maha, d-knn or auto)")

    def _fit_scoring(self, clips: Sequence[Clip], feats: Sequence[np.ndarray],
                     parts: Sequence[dict], fit_idx: list[int], val_idx: list[int],
                     progress: bool) -> tuple[np.ndarray, dict, list[Clip]]:
        """Embedding statistics from the fit clips; the score rule (score=auto) from the
        held-out normal clips against pseudo-anomalous copies of them; then the embedding
        statistics again from every training clip. Returns the held-out clips' scores with
        the chosen rule and the clips (kept per clip: a fusion standardises with them)."""
        cfg = self.config
        held_out = val_idx if len(val_idx) >= MIN_HELD_OUT else list(range(len(clips)))
        self._fit_embeddings([parts[i] for i in fit_idx], [clips[i] for i in fit_idx])
        held_clips = [clips[i] for i in held_out]
        normal = self._rule_scores([parts[i] for i in held_out], held_clips)
        extra: dict = {"normal_scores_from": "validation clips" if held_out is val_idx
                       else "all training clips (too few validation clips)"}
        if cfg.score == "auto":
            pool, _ = pseudo_anomaly_pool(list(clips), self.spec, cfg.seed, progress=progress)
            fake = pseudo_anomalous([feats[i] for i in held_out], pool, self.spec, cfg.seed,
                                    (cfg.pseudo_anr_min_db, cfg.pseudo_anr_max_db))
            pseudo = self._rule_scores(self._clip_parts(fake), held_clips)
            self.chosen, aucs = choose_rule(normal, pseudo)
            extra["score_choice"] = {"rule": self.chosen, "pseudo_anomaly_auc": aucs,
                                     "held_out_clips": len(held_out)}
        else:
            self.chosen = cfg.score
        extra["score_rule"] = self.chosen
        self._fit_embeddings(parts, clips)
        return normal[self.chosen], extra, held_clips

    # -- scoring -----------------------------------------------------------------------------
    def _clip_parts(self, feats: Sequence[np.ndarray]) -> list[dict]:
        """Per clip: the patch-rule scores (mean over patches) and the mean embedding."""
        x, owner = stack_windows(feats, self.spec)
        net = self.model
        cols: dict[str, list[np.ndarray]] = {r: [] for r in PATCH_RULES}
        emb = []
        with torch.no_grad():
            for idx in batched(len(x), 128):
                p = net.scale(as_images(x[idx.numpy()]))
                z = net.generator.encode(p)
                r = net.generator.decode(z)
                zr = net.generator.encode(r)
                pf, rf = p.flatten(1), r.flatten(1)
                for space, a, b in (("x", pf, rf), ("z", z, zr)):
                    cols[f"{space}-l1"].append((a - b).abs().mean(1).numpy())
                    cols[f"{space}-l2"].append((a - b).pow(2).mean(1).numpy())
                    cols[f"{space}-cos"].append((1 - F.cosine_similarity(a, b, dim=1)).numpy())
                emb.append(net.discriminator.embed(p).double().numpy())
        flat = {r: np.concatenate(v) for r, v in cols.items()}
        e = np.concatenate(emb)
        return [{**{r: float(flat[r][owner == i].mean()) for r in PATCH_RULES},
                 "embedding": e[owner == i].mean(0)} for i in range(len(feats))]

    def _fit_embeddings(self, parts: Sequence[dict], clips: Sequence[Clip]) -> None:
        self.embedding_bank = {}
        for s in sorted({c.section for c in clips}):
            self.embedding_bank[s] = np.stack([p["embedding"] for p, c in zip(parts, clips)
                                               if c.section == s])
        self._fit_detectors()

    def _fit_detectors(self) -> None:
        cfg = self.config
        self.maha, self.lof, self.unit_bank = {}, {}, {}
        for s, bank in self.embedding_bank.items():
            lw = LedoitWolf().fit(bank)
            self.maha[s] = (lw.location_, lw.precision_)
            self.unit_bank[s] = bank / np.linalg.norm(bank, axis=1, keepdims=True).clip(1e-12)
            k = self.caps.cap("lof_neighbors", cfg.lof_neighbors, len(bank) - 1,
                              f"the {len(bank) - 1} other embeddings of section {s:02d}")
            self.lof[s] = LocalOutlierFactor(n_neighbors=k, novelty=True).fit(bank) \
                if len(bank) > 2 else None

    def _embedding_scores(self, e: np.ndarray, section: int) -> dict[str, float]:
        if section not in self.embedding_bank:
            raise DataError(f"section {section:02d} was not in the training data "
                             f"(trained sections: {sorted(self.embedding_bank)})")
        mean, precision = self.maha[section]
        d = e - mean
        unit = self.unit_bank[section]
        cos = 1.0 - unit @ (e / max(np.linalg.norm(e), 1e-12))
        k = self.caps.cap("knn_k", self.config.knn_k, len(unit),
                          f"the {len(unit)} embeddings of section {section:02d}")
        lof = self.lof[section]
        return {"d-maha": float(np.sqrt(max(d @ precision @ d, 0.0))),
                "d-knn": float(np.sort(cos)[:k].mean()),
                "d-lof": float(-lof.score_samples(e[None])[0]) if lof is not None else 0.0}

    def _rule_scores(self, parts: Sequence[dict], clips: Sequence[Clip]) -> dict[str, np.ndarray]:
        rows = []
        for p, c in zip(parts, clips):
            try:
                rows.append({**{r: p[r] for r in PATCH_RULES},
                             **self._embedding_scores(p["embedding"], c.section)})
            except DataError as exc:     # a section the run was not trained on: name the clip
                raise DataError(f"{c.path}: {exc}") from None
        return {r: np.array([row[r] for row in rows]) for r in RULES}

    def chunk_scores(self, clips: Sequence[Clip]) -> dict[str, np.ndarray]:
        return self._rule_scores(self._clip_parts(clip_features(clips, self.spec, False)), clips)

    # -- export (training/method.py Exportable; docs/export.md "AEGAN-AD") -------------------
    def device_graph(self) -> DeviceGraph:
        net = AeganDevice(self.model.eval(), self.default_rule[0])
        return DeviceGraph(net.eval(), (1, 1, self.spec.n_mels, self.spec.window_frames),
                           net.outputs)

    def device_rule(self) -> str:
        return f"aegan-{self.default_rule}"

    def rule_arrays(self, section: int, rule: str | None = None) -> dict[str, np.ndarray]:
        """What agent/model/rules/aegan.py needs to score ``section`` with ``rule`` (the
        run's own score without one: export ships that), from the detectors fitted on every
        training clip's mean embedding (``_fit_detectors``)."""
        rule = self.check_rule(rule or self.default_rule)
        if rule.startswith("x-"):
            return {"db_range": np.array([float(self.model.low), float(self.model.high)])}
        if rule.startswith("z-"):
            return {}
        if section not in self.embedding_bank:
            raise DataError(f"section {section:02d} was not in the training data "
                            f"(trained sections: {sorted(self.embedding_bank)})")
        if rule == "d-maha":
            location, precision = self.maha[section]
            return {"location": location, "precision": precision}
        if rule == "d-knn":
            unit = self.unit_bank[section]
            return {"unit_bank": unit, "k": np.array([min(self.config.knn_k, len(unit))])}
        lof = self.lof[section]
        if lof is None:
            raise RunError(f"section {section:02d} has {len(self.embedding_bank[section])} "
                           f"training clips; d-lof scores every clip 0 with fewer than 3, so "
                           f"the run does not export with it (train with another 'score')")
        k = int(lof.n_neighbors_)
        dist, nbr = lof.kneighbors()          # each training embedding's k nearest others
        kdist = dist[:, k - 1]
        lrd = 1.0 / (np.maximum(dist, kdist[nbr]).mean(axis=1) + 1e-10)
        return {"bank": self.embedding_bank[section], "bank_kdist": kdist,
                "bank_lrd": lrd, "k": np.array([k])}

    def refit_rule_arrays(self, clips: Sequence[Clip], outputs: Sequence[WindowOutputs]
                          ) -> dict[int, dict[str, np.ndarray]] | None:
        """The d- rules' statistics (training/method.py ``RefitsRuleArrays``) fitted as
        ``_fit_embeddings`` fits them, on the artifact's mean embedding of each training
        clip; the x- and z- rules hold no statistics of the network's outputs."""
        if not self.default_rule.startswith("d-"):
            return None
        twin = copy.copy(self)          # the run's own statistics stay as they are
        twin._fit_embeddings([{"embedding": e} for e in clip_means(outputs, "embedding")],
                             clips)
        return {s: twin.rule_arrays(s) for s in sorted(twin.embedding_bank)}

    # -- run directory -----------------------------------------------------------------------
    def _save_scoring(self, run_dir: Path, feats: Sequence[np.ndarray]) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        for s, bank in self.embedding_bank.items():
            np.save(run_dir / f"embeddings_section_{s:02d}.npy", bank)
        x, _ = stack_windows(feats, self.spec)
        self.mean_patch = x.mean(axis=0).T                           # (mels, frames), dB
        np.save(run_dir / "mean_patch.npy", self.mean_patch)

    def localization_maps(self, logmel: np.ndarray) -> dict[str, np.ndarray]:
        """(mels, frames) dB maps of one clip for localisation (Jiang et al., Fig. 3): the
        query, its reconstruction and the mean training patch, each stitched from the clip's
        patches (overlaps averaged), and the reconstruction's difference from the mean."""
        from harken.agent.features import windows
        w = windows(logmel, self.spec)
        hop, frames = self.spec.window_hop, self.spec.window_frames
        with torch.no_grad():
            net = self.model
            recon = net.unscale(net.generator(net.scale(as_images(w)))).squeeze(1).numpy()
        length = (len(w) - 1) * hop + frames
        total = np.zeros((self.spec.n_mels, length))
        mean = np.zeros_like(total)
        count = np.zeros(length)
        for i, r in enumerate(recon):
            total[:, i * hop:i * hop + frames] += r
            mean[:, i * hop:i * hop + frames] += self.mean_patch
            count[i * hop:i * hop + frames] += 1
        recon_map, mean_map = total / count, mean / count
        return {"query": logmel[:length].T, "reconstruction": recon_map, "mean": mean_map,
                "difference": np.abs(recon_map - mean_map)}

    def load_extra(self, run_dir: Path, info: RunInfo) -> None:
        self.low, self.high = info.architecture["low"], info.architecture["high"]
        self.chosen = info.score_rule or ""
        self.embedding_bank = {int(s): load_array(run_dir, f"embeddings_section_{int(s):02d}.npy")
                               for s in info.sections}
        self._fit_detectors()
        self.mean_patch = load_array(run_dir, "mean_patch.npy")
