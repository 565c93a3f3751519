"""Section classifiers on 1 x mels x frames windows: MobileNetV2 (``mobilenetv2``), the
dual-input network that adds a spectrum branch (``mobilenetv2-dual``, the windows then
carry the log power spectrum after the mels) and the contrastive AE + MobileNetV2 joint
training of Cai et al. (``contrastive``).

Three score rules, all fitted on every run (``evaluate --score`` picks; each is an agent
rule, and the run's ``score`` setting is the one its bundle ships):

* ``logit``: per window log((1 - p) / p), p = the classifier's probability of the clip's
  own section (the most probable of that section's attribute classes); clip = mean.
* ``embedding``: cosine distance of the clip's mean GAMP embedding (standardised) to the
  normal bank of its section: k-means centres of the source clips plus every target clip,
  the rule the strongest DCASE systems use, because the few target clips get their own
  entries. Each distance is divided by its domain's typical distance for an unseen normal
  training clip, then the minimum is taken (as the AE's selective Mahalanobis does).
* ``embedding-density``: cosine distance of the same standardised embedding to each of the
  section's normal training clips, in units of that clip's local density; the minimum. No
  domain labels in the bank (agent/model/rules/embedding_density.py).

The default head is MobileNetV2's linear softmax head, the embedding being the GAMP vector.
``--set head=adacos`` trains a cosine (AdaCos) head over a 128-d projection instead, as the
DCASE systems that score by embedding distance do. It is not the default because within
this corpus's few attribute classes and the five-minute CPU budget it has not been shown
to help.

``refit`` rebuilds the bank and the normal-score statistics of a trained run (the same
fit/validation split) without retraining the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn
from tqdm import tqdm

from harken.common.errors import DataError, UsageError
from harken.agent.model.rules import ScoreRule, make_rule, unit_embedding
from harken.agent.model.rules.density import DEFAULT_K, local_densities
from harken.training.section_bank import SectionBank
from harken.training.augment import (frame_shift, median_filter_time, mixup, smote_target,
                                     spec_augment)
from harken.training.config import (Count, Fraction, Probability, Rate, Size, TrainConfig, Weight,
                                      at_least)
from harken.training.data.corpus import Clip
from harken.training.data.pseudo_anomalies import other_machine_clips
from harken.training.data.windows import (class_labels, class_sections, clip_features, stack_windows,
                                   validation_split)
from harken.training.method import DeviceGraph
from harken.training.models.dense_ae import DenseAE, per_sample_mse
from harken.training.models.losses import nt_xent
from harken.training.models.cosine_head import CosineHead
from harken.training.models.mobilenetv2 import WIDTHS, MobileNetV2
from harken.training.models.spectrum_branch import SpectrumBranch
from harken.training.run_checks import check_finite
from harken.training.runs import (NormalScores, RunError, RunInfo, normal_score_stats,
                                  run_training_clips, save_run, write_held_out)
from harken.training.torch_method import MIN_HELD_OUT, TorchMethod, batched, load_array
from harken.training.trainer import fit

HEADS = ("adacos", "softmax")


@dataclass(frozen=True)
class ClassifierConfig(TrainConfig):
    epochs: int = 16
    batch_size: int = 64
    windows_per_epoch: Size = 2048     # windows drawn at random per epoch; 0 = all of them
    width: float = 0.5                # MobileNetV2 width multiplier: 0.35, 0.5, 0.75, 1.0
    dropout: Fraction = 0.2
    head: Literal["softmax", "adacos"] = "softmax"  # linear head, or the cosine (AdaCos) head
    # cosine head's embedding width (softmax: the GAMP width)
    embedding_dim: Annotated[int, at_least(2)] = 128
    score: Literal["logit", "embedding", "embedding-density"] = "embedding"
    kmeans: Count = 16                  # source-domain centres per section in the embedding bank
    density_k: Count = DEFAULT_K        # neighbours of the local density (embedding-density rule)
    mixup_alpha: Weight = 0.2          # 0 = off
    spec_augment: bool = True
    frame_shift: Size = 8              # max frames of circular shift; 0 = off
    median_p: Probability = 0.0             # chance that a window is replaced by its 31-frame median
    smote: bool = False               # fill the target domain's windows up to the source count
    other_clips: Size = 60             # training clips per other machine type of the corpus, as
                                      # extra classes (one classifier over all types, as the
                                      # strongest DCASE systems train); 0 = this type only
    # contrastive joint training only (Cai et al., DCASE 2021)
    ntxent_weight: Weight = 0.0005
    temperature: Rate = 0.07
    projection: Count = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width not in WIDTHS:
            raise UsageError(f"width must be one of {list(WIDTHS)}, got {self.width}")
        if self.embedding_dim < 2:
            raise UsageError(f"embedding_dim must be at least 2, got {self.embedding_dim}")
        if self.kmeans < 1:
            raise UsageError(f"kmeans must be at least 1, got {self.kmeans}")
        if self.density_k < 1:
            raise UsageError(f"density_k must be at least 1, got {self.density_k}")
        if not 0.0 <= self.median_p <= 1.0:
            raise UsageError(f"median_p is a probability, got {self.median_p}")


class ClassifierNet(nn.Module):
    """Standardisation (fixed, from the training windows) + MobileNetV2 + a classification
    head: what gets exported. ``head="softmax"``: MobileNetV2's linear head, the embedding
    is the GAMP vector itself; ``head="adacos"``: a cosine head whose bias-free projection
    of the GAMP vector is the embedding (training/models/cosine_head.py).

    ``n_freqs`` > 0 makes it the dual-input network (``mobilenetv2-dual``): the input rows
    are the ``n_mels`` mels followed by the ``n_freqs`` bins of the log power spectrum;
    MobileNetV2 reads the mels, its GAMP vector projected to ``embedding_dim``, and the
    spectrum branch (training/models/spectrum_branch.py) reads the window's mean spectrum.
    Each branch has its own linear head and is trained to classify on its own, so neither
    can lean on the other; the logits are their sum and the embedding is both halves side
    by side, equally wide so that each counts the same in a distance."""

    def __init__(self, n_classes: int, width: float, dropout: float = 0.2,
                 mean: float = 0.0, std: float = 1.0, head: str = "softmax",
                 embedding_dim: int = 128, n_mels: int = 0, n_freqs: int = 0) -> None:
        super().__init__()
        if head not in HEADS:
            raise UsageError(f"head must be one of {list(HEADS)}, got {head!r}")
        if n_freqs and head != "softmax":
            raise UsageError("the dual-input network has one linear head per branch; "
                             f"head={head!r} is not available for it")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.n_mels, self.n_freqs = n_mels, n_freqs
        single = head == "softmax" and not n_freqs
        self.cnn = MobileNetV2(n_classes if single else None, width, dropout=dropout)
        self.cosine = CosineHead(self.cnn.embedding_dim, embedding_dim, n_classes) \
            if head == "adacos" else None
        self.spectrum: SpectrumBranch | None = None
        if n_freqs:
            self.project = nn.Linear(self.cnn.embedding_dim, embedding_dim, bias=False)
            self.spectrum = SpectrumBranch(n_freqs, embedding_dim)
            self.heads = nn.ModuleList(nn.Sequential(nn.Dropout(dropout),
                                                     nn.Linear(embedding_dim, n_classes))
                                       for _ in range(2))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def mels(self, x: torch.Tensor) -> torch.Tensor:
        """The mel rows of an input (all of them for the single-input network)."""
        return x[:, :, :self.n_mels] if self.spectrum is not None else x

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The GAMP vector of the CNN (what the contrastive projection reads)."""
        return self.cnn.embed(self.standardise(self.mels(x)))

    def classify(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, scoring embedding) from the GAMP vector (single-input network)."""
        if self.cosine is not None:
            return self.cosine(pooled)
        return self.cnn.head(pooled), pooled

    def branches(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(logits, embedding) of each branch: one for the single-input network."""
        if self.spectrum is None:
            return [self.classify(self.pooled(x))]
        halves = (self.project(self.pooled(x)),
                  self.spectrum(x[:, 0, self.n_mels:].mean(dim=2)))
        return [(head(e), e) for head, e in zip(self.heads, halves)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self.branches(x)
        if len(parts) == 1:
            return parts[0]
        return parts[0][0] + parts[1][0], torch.cat([parts[0][1], parts[1][1]], dim=1)


class ContrastiveHeads(nn.Module):
    """Training-only parts of the contrastive method: the AE over the window's 5-frame
    vectors, the two projections to 256 and the shared 256 -> 256 -> 256 MLP."""

    def __init__(self, n_mels: int, embedding_dim: int, projection: int = 256) -> None:
        super().__init__()
        self.ae = DenseAE(5 * n_mels)
        self.from_ae = nn.Linear(8, projection)
        self.from_cnn = nn.Linear(embedding_dim, projection)
        self.shared = nn.Sequential(nn.Linear(projection, projection), nn.ReLU(),
                                    nn.Linear(projection, projection))


def window_vectors(x: torch.Tensor, frames: int = 5) -> torch.Tensor:
    """(B, 1, mels, T) -> (B, T - frames + 1, frames * mels), frame-major like the DCASE AE."""
    b, _, mels, t = x.shape
    v = x.squeeze(1).transpose(1, 2).unfold(1, frames, 1)        # (B, T', mels, frames)
    return v.transpose(2, 3).reshape(b, t - frames + 1, frames * mels)


class ClassifierMethod(TorchMethod):
    name = "mobilenetv2"
    preset_name = "mobilenetv2"
    config_cls = ClassifierConfig
    score_rules = ("logit", "embedding", "embedding-density")
    summary = "MobileNetV2 section x attribute classifier"
    contrastive = False
    spectrum_branch = False     # the dual-input network (mobilenetv2-dual)

    def __init__(self, config=None, overrides=None, spec=None) -> None:
        super().__init__(config, overrides, spec)
        self.class_names: list[str] = []
        self.class_section = np.zeros(0, dtype=int)
        self.banks: dict[int, SectionBank] = {}
        self.bank_missing = ""

    def architecture(self) -> dict:
        arch = {"n_classes": len(self.class_names), "width": self.config.width,
                "dropout": self.config.dropout, "head": self.config.head,
                "embedding_dim": self.config.embedding_dim}
        if self.spectrum_branch:
            arch |= {"n_mels": self.spec.n_mels, "n_freqs": self.spec.n_freqs}
        return arch

    def build_from(self, architecture: dict) -> ClassifierNet:
        return ClassifierNet(**architecture)

    # -- training ----------------------------------------------------------------------------
    def train(self, clips: Sequence[Clip], run_dir: Path, progress: bool = True) -> RunInfo:
        cfg = self.config
        device = self.setup()
        machine = clips[0].machine
        own = len(clips)
        clips = list(clips) + other_machine_clips(clips, cfg.other_clips, cfg.seed)
        feats = clip_features(clips, self.spec, progress)
        self.class_names, clip_class = class_labels(clips)
        self.class_section = class_sections(self.class_names, machine)
        fit_idx, val_idx = validation_split(clips, cfg.val_fraction, cfg.seed)
        x_fit, owner = stack_windows([feats[i] for i in fit_idx], self.spec)
        y_fit = clip_class[np.asarray(fit_idx)][owner]
        if cfg.smote:
            x_new, y_new = self._smote_target(x_fit, y_fit, [clips[i] for i in fit_idx], owner)
            x_fit, y_fit = np.concatenate([x_fit, x_new]), np.concatenate([y_fit, y_new])
        val_src = val_idx if val_idx else fit_idx
        x_val, val_owner = stack_windows([feats[i] for i in val_src], self.spec)
        y_val = clip_class[np.asarray(val_src)][val_owner]

        mels = x_fit[:, :, :self.spec.n_mels]
        net = ClassifierNet(mean=float(mels.mean()), std=float(mels.std()) + 1e-6,
                            **self.architecture())
        if net.spectrum is not None:
            net.spectrum.set_statistics(torch.from_numpy(
                x_fit[:, :, self.spec.n_mels:].mean(axis=1)))
        self.model = net.to(device).to(memory_format=torch.channels_last)
        heads = ContrastiveHeads(self.spec.n_mels, net.cnn.embedding_dim, cfg.projection).to(
            device) if self.contrastive else None
        xt = torch.from_numpy(x_fit).transpose(1, 2).unsqueeze(1)       # (N, 1, mels, frames)
        yt = torch.from_numpy(y_fit).long()
        xv = torch.from_numpy(x_val).transpose(1, 2).unsqueeze(1)
        yv = torch.from_numpy(y_val).long()
        n_classes = len(self.class_names)

        def batches(epoch: int):
            n = len(xt)
            pick = (torch.randint(0, n, (cfg.windows_per_epoch,), generator=self.generator)
                    if 0 < cfg.windows_per_epoch < n else torch.randperm(n, generator=self.generator))
            for start in range(0, len(pick), cfg.batch_size):
                idx = pick[start:start + cfg.batch_size]
                if len(idx) < 2:
                    continue
                x, y = self._augment(xt[idx], F.one_hot(yt[idx], n_classes).float())
                yield (x.to(device).contiguous(memory_format=torch.channels_last), y.to(device))

        def soft_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return -(y * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()

        def loss_fn(batch) -> torch.Tensor:
            x, y = batch
            if heads is not None:
                pooled = net.pooled(x)
                logits, _ = net.classify(pooled)
                return soft_cross_entropy(logits, y) + self._contrastive_terms(net, heads, x,
                                                                               pooled)
            # every branch classifies on its own (one branch unless dual-input)
            return sum(soft_cross_entropy(logits, y) for logits, _ in net.branches(x))

        def val_loss() -> float:
            total = 0.0
            for idx in batched(len(xv), 256):
                x = xv[idx].to(device).contiguous(memory_format=torch.channels_last)
                if heads is not None:
                    pooled = net.pooled(x)
                    logits, _ = net.classify(pooled)
                    part = F.cross_entropy(logits.float(), yv[idx].to(device), reduction="sum")
                    part = part + len(idx) * self._contrastive_terms(net, heads, x, pooled)
                else:
                    part = sum(F.cross_entropy(logits.float(), yv[idx].to(device),
                                               reduction="sum") for logits, _ in net.branches(x))
                total += float(part)
            return total / len(xv)

        params = list(net.parameters()) + (list(heads.parameters()) if heads is not None else [])
        hist = fit(net if heads is None else nn.ModuleList([net, heads]), batches, loss_fn,
                   val_loss, cfg, device, progress, desc=f"{self.name} {clips[0].machine}",
                   parameters=params)
        self.model = net.cpu().to(memory_format=torch.contiguous_format).eval()

        held_clips, normal = self._fit_scoring(clips[:own], feats[:own],
                                               [i for i in fit_idx if i < own],
                                               [i for i in val_idx if i < own])
        self._save_scoring(run_dir)
        return self.save(run_dir, clips[:own], hist, normal, held_out_clips=held_clips, extra={
            "classes": self.class_names,
            "other_machine_clips": len(clips) - own,
            "normal_scores_from": "validation clips" if len(val_idx) >= MIN_HELD_OUT
            else "all training clips (too few validation clips)",
            "inference": "ClassifierNet only" + (" (AE and projection heads are training-only)"
                                                 if self.contrastive else "")})

    @classmethod
    def refit(cls, run_dir: Path, progress: bool = True) -> RunInfo:
        """Re-fit bank, domain scales and normal statistics of a run from its training
        clips, with the split training used; the network is not touched."""
        self = cls.load(run_dir)
        info = self.info
        own = run_training_clips(Path(info.corpus.root), info)
        clips = own + other_machine_clips(own, self.config.other_clips, self.config.seed)
        fit_idx, val_idx = validation_split(clips, self.config.val_fraction, self.config.seed)
        feats = clip_features(own, self.spec, progress)
        held_clips, normal = self._fit_scoring(own, feats, [i for i in fit_idx if i < len(own)],
                                               [i for i in val_idx if i < len(own)])
        self._save_scoring(run_dir)
        info.normal_scores = NormalScores.model_validate(normal_score_stats(normal))
        write_held_out(run_dir, held_clips, normal)
        save_run(run_dir, info)
        return info

    def _fit_scoring(self, clips: Sequence[Clip], feats: Sequence[np.ndarray], fit_idx: list[int],
                     val_idx: list[int]) -> tuple[list[Clip], np.ndarray]:
        """Embedding bank from the fit clips; the validation clips are scored as unseen
        normals (returned with their clips), then join the bank."""
        _, emb_fit = self._infer([feats[i] for i in fit_idx])
        fit_clips = [clips[i] for i in fit_idx]
        self._fit_bank(emb_fit, fit_clips)
        held_out = val_idx if len(val_idx) >= MIN_HELD_OUT else list(range(len(clips)))
        logits_h, emb_h = self._infer([feats[i] for i in held_out])
        normal = self._rule_scores(logits_h, emb_h, [clips[i] for i in held_out],
                                   self.default_rule)
        if val_idx:
            emb_v = emb_h if held_out is val_idx else self._infer([feats[i] for i in val_idx])[1]
            self._fit_bank(np.concatenate([emb_fit, emb_v]), fit_clips + [clips[i] for i in val_idx])
        return [clips[i] for i in held_out], normal

    def _save_scoring(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        for s, bank in self.banks.items():
            bank.save(run_dir, s)
        np.save(run_dir / "embedding_mean.npy", self.emb_mean)
        np.save(run_dir / "embedding_std.npy", self.emb_std)

    def _augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, g = self.config, self.generator
        if cfg.median_p > 0:
            pick = torch.rand(len(x), generator=g) < cfg.median_p
            if pick.any():
                x = x.clone()
                x[pick] = median_filter_time(x[pick], 31)
        if cfg.frame_shift > 0:
            x = frame_shift(x, g, cfg.frame_shift)
        if cfg.spec_augment:
            # masks on the mel image only: the spectrum branch reads the window's mean
            # spectrum, where a masked time span would only shift the mean
            n_mels = self.spec.n_mels
            x = torch.cat([spec_augment(x[:, :, :n_mels], g), x[:, :, n_mels:]], dim=2) \
                if self.spectrum_branch else spec_augment(x, g)
        if cfg.mixup_alpha > 0:
            x, y = mixup(x, y, g, cfg.mixup_alpha)
        return x, y

    def _contrastive_terms(self, net: ClassifierNet, heads: ContrastiveHeads, x: torch.Tensor,
                           emb: torch.Tensor) -> torch.Tensor:
        """MSE of the AE over the window's 5-frame vectors + weight * NT-Xent between the AE
        bottleneck (mean over the window) and the CNN's GAMP embedding, both projected."""
        v = window_vectors(net.standardise(x).contiguous())
        b, n_vec, dim = v.shape
        z, recon = heads.ae.encode_decode(v.reshape(b * n_vec, dim))
        mse = per_sample_mse(v.reshape(b * n_vec, dim), recon).mean()
        za = heads.shared(heads.from_ae(z.reshape(b, n_vec, -1).mean(dim=1)))
        zc = heads.shared(heads.from_cnn(emb))
        return mse + self.config.ntxent_weight * nt_xent(za.float(), zc.float(),
                                                         self.config.temperature)

    def _smote_target(self, x: np.ndarray, y: np.ndarray, clips: Sequence[Clip],
                      owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        target = np.array([clips[o].domain == "target" for o in owner])
        section = self.class_section[y]
        # per class of our machine (another machine type's class is not ours to fill),
        # up to the source windows of the class's section
        return smote_target(x, np.where(section >= 0, y, -1), section, target,
                            np.random.default_rng(self.config.seed))

    # -- scoring -----------------------------------------------------------------------------
    def _infer(self, feats: Sequence[np.ndarray], batch: int = 256
               ) -> tuple[list[np.ndarray], np.ndarray]:
        """Per clip: window class logits; and each clip's mean embedding."""
        x, owner = stack_windows(feats, self.spec)
        xt = torch.from_numpy(x).transpose(1, 2).unsqueeze(1)
        logits, embs = [], []
        with torch.no_grad():
            for idx in batched(len(xt), batch):
                out, emb = self.model(xt[idx].contiguous())
                logits.append(out.numpy())
                embs.append(emb.numpy())
        lg, e = np.concatenate(logits), np.concatenate(embs).astype(np.float64)
        clip_emb = np.stack([e[owner == i].mean(axis=0) for i in range(len(feats))])
        return [lg[owner == i] for i in range(len(feats))], clip_emb

    def _unit(self, emb: np.ndarray) -> np.ndarray:
        """Embeddings standardised per dimension, then scaled to unit length. The softmax
        head's embedding is GAMP of ReLU6 features, all-positive with a large common part,
        so raw cosine distances between clips are all tiny; standardising with the training
        clips' statistics spreads them. The cosine head's embedding was trained for cosine
        geometry and is used as it is (mean 0, std 1 stored)."""
        return unit_embedding(emb, self.emb_mean, self.emb_std)

    def _fit_bank(self, emb: np.ndarray, clips: Sequence[Clip]) -> None:
        """Per section: k-means centres of the source clips plus every target clip, and each
        domain's typical distance for a normal clip the bank has not seen, so that a
        distance counts in units of its own domain (source clips sit among many centres, the
        few target clips are sparse; raw distances would make every target clip look
        anomalous, or every source clip)."""
        if self.config.head == "softmax":
            # A dimension that barely varies over the training clips (ReLU6 channels that are
            # nearly dead) would, divided by its tiny spread, let rounding noise - float
            # summation order, int8 quantization on the device - dominate the distance; no
            # dimension counts more than one with a tenth of the median spread.
            std = emb.std(axis=0)
            floor = max(0.1 * float(np.median(std)), 1e-9)
            self.emb_mean, self.emb_std = emb.mean(axis=0), np.maximum(std, floor)
        else:
            self.emb_mean, self.emb_std = np.zeros(emb.shape[1]), np.ones(emb.shape[1])
        self.bank_missing = ""
        unit = self._unit(emb)
        self.banks = {}
        for s in sorted({c.section for c in clips}):
            src = unit[[c.section == s and c.domain == "source" for c in clips]]
            tgt = unit[[c.section == s and c.domain == "target" for c in clips]]
            centres = self._centres(src)
            scale = np.array([self._unseen_distance(src),
                              _typical_distance(tgt, tgt, leave_one_out=True)])
            if not np.isfinite(scale).all():       # a domain without clips
                scale = np.full(2, np.nanmean(scale))
            self.banks[s] = SectionBank(
                np.concatenate([centres, tgt]),
                np.r_[np.zeros(len(centres), bool), np.ones(len(tgt), bool)], scale,
                # every training clip of the section, for the domain-agnostic density rule
                unit[[c.section == s for c in clips]])

    def _centres(self, src: np.ndarray) -> np.ndarray:
        """k-means centres (unit length) of the source embeddings; the clips themselves
        when there are no more of them than centres."""
        if len(src) <= self.config.kmeans:
            self.caps.cap("kmeans", self.config.kmeans, len(src),
                          f"the {len(src)} source embeddings of a section (the bank holds them all)")
            return src
        km = KMeans(self.config.kmeans, n_init=10, random_state=self.config.seed).fit(src)
        return km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1,
                                                    keepdims=True).clip(1e-12)

    def _unseen_distance(self, src: np.ndarray, folds: int = 5) -> float:
        """Typical distance of an unseen source clip to its nearest centre, cross-fitted:
        centres fitted on the other folds, distances measured on the held-out one. Centres
        fitted on a clip sit closer to it than to a new clip, which would scale the source
        domain too small and make every unseen source normal look anomalous
        (tests/training/test_training_parts.py shows the bias)."""
        if len(src) < 2 * folds:
            return _typical_distance(src, src, leave_one_out=True)
        order = np.random.default_rng(self.config.seed).permutation(len(src))
        d = []
        for part in np.array_split(order, folds):
            rest = np.setdiff1d(order, part)
            d.append((1.0 - src[part] @ self._centres(src[rest]).T).min(axis=1))
        return float(max(np.median(np.concatenate(d)), 1e-9))

    # -- export (training/method.py's Exportable) ------------------------------------------
    def device_graph(self) -> DeviceGraph:
        # the image's rows: the mels, then the spectrum's bins for the dual-input network
        return DeviceGraph(self.model.eval(), (1, 1, self.spec.n_features, self.spec.window_frames),
                           ("logits", "embedding"))

    def device_rule(self) -> str:
        return self.default_rule         # each of its scores is an agent rule

    def rule_arrays(self, section: int, rule: str | None = None) -> dict[str, np.ndarray]:
        """What agent/model/rules/ needs to score ``section`` with ``rule`` (the device
        rule without one: export ships that)."""
        rule = rule or self.device_rule()
        if self.bank_missing:
            raise RunError(self.bank_missing)
        if section not in self.banks:
            raise DataError(f"section {section:02d} was not in the training data "
                            f"(trained sections: {sorted(self.banks)})")
        if rule == "logit":
            return {"section_classes": self.class_section == section}
        bank = self.banks[section]
        if rule == "embedding-density":
            if bank.clips is None:
                raise RunError("this run was made before the embedding-density rule (no clip "
                               "bank); 'harken-train refit RUN' adds it")
            return {"bank": bank.clips,
                    "bank_density": local_densities(bank.clips, self.config.density_k),
                    "embedding_mean": self.emb_mean, "embedding_std": self.emb_std}
        return {"bank": bank.entries, "bank_target": bank.is_target, "bank_scale": bank.scale,
                "embedding_mean": self.emb_mean, "embedding_std": self.emb_std}

    def _rule_scores(self, logits: list[np.ndarray], emb: np.ndarray, clips: Sequence[Clip],
                     rule: str) -> np.ndarray:
        """Clip scores through the device's own rule (agent/model/rules/): the logit rule from
        the windows' logits, the embedding rule from the clip's mean embedding."""
        if self.bank_missing:
            raise RunError(self.bank_missing)
        rules: dict[int, ScoreRule] = {}
        out = np.empty(len(clips))
        for i, c in enumerate(clips):
            if c.section not in rules:
                try:
                    rules[c.section] = make_rule(rule, self.rule_arrays(c.section, rule))
                except DataError as exc:     # a section the run was not trained on: name the clip
                    raise DataError(f"{c.path}: {exc}") from None
            r = rules[c.section]
            out[i] = r.reduce(r.evidence(None, logits[i] if rule == "logit" else emb[i][None]))
        return out

    def score(self, clips: Sequence[Clip], progress: bool = True, rule: str | None = None
              ) -> np.ndarray:
        rule = self.check_rule(rule)
        out = np.empty(len(clips))
        starts = range(0, len(clips), 32)          # a few hundred MB of windows at most
        for start in tqdm(starts, desc=f"scoring ({rule})", unit="32 clips", disable=not progress,
                          leave=False):
            part = clips[start:start + 32]
            logits, emb = self._infer(clip_features(part, self.spec, False))
            out[start:start + len(part)] = self._rule_scores(logits, emb, part, rule)
        return out

    def load_extra(self, run_dir: Path, info: RunInfo) -> None:
        if info.classes is None:
            raise RunError(f"{run_dir / 'run.json'}: missing field 'classes'")
        self.class_names = list(info.classes)
        self.class_section = class_sections(self.class_names, info.machine)
        sections = list(info.sections)
        missing = [m for s in sections if (m := SectionBank.missing(run_dir, s))] + [
            n for n in ("embedding_mean.npy", "embedding_std.npy") if not (run_dir / n).is_file()]
        if missing:     # scoring says so; refit() rebuilds them
            self.bank_missing = f"{run_dir}: no embedding bank ({missing[0]} missing); " \
                                f"run 'harken-train refit {run_dir}'"
            return
        self.banks = {s: SectionBank.load(run_dir, s) for s in sections}
        self.emb_mean = load_array(run_dir, "embedding_mean.npy")
        self.emb_std = load_array(run_dir, "embedding_std.npy")
        for s, bank in self.banks.items():          # training/run_checks.py
            for part, a in (("", bank.entries), ("_scale", bank.scale), ("_clips", bank.clips)):
                if a is not None:
                    check_finite(run_dir / f"bank_section_{s:02d}{part}.npy", {"": a})
        check_finite(run_dir / "embedding_mean.npy", {"": self.emb_mean})
        check_finite(run_dir / "embedding_std.npy", {"": self.emb_std})


def _typical_distance(points: np.ndarray, bank: np.ndarray, leave_one_out: bool) -> float:
    """Median cosine distance from unit ``points`` to their nearest ``bank`` entry (another
    one than themselves with ``leave_one_out``, ``bank`` then being ``points``)."""
    if len(points) < (2 if leave_one_out else 1) or len(bank) == 0:
        return float("nan")
    d = 1.0 - points @ bank.T
    if leave_one_out:
        np.fill_diagonal(d, np.inf)
    return float(max(np.median(d.min(axis=1)), 1e-9))


class ContrastiveMethod(ClassifierMethod):
    name = "contrastive"
    summary = "MobileNetV2 trained jointly with the dense AE, NT-Xent between them (Cai et al.)"
    contrastive = True


class DualInputMethod(ClassifierMethod):
    """MobileNetV2 on the log-mel image plus the spectrum branch on the window's mean log
    power spectrum (ClassifierNet with ``n_freqs``): the dual-input design of Wilkinghoff's
    DCASE systems, so that the embedding keeps the spectral envelope and the tonal lines
    the mel image's global pooling loses."""
    name = "mobilenetv2-dual"
    preset_name = "mobilenetv2-dual"
    summary = "MobileNetV2 on log-mels + a spectrum branch on the mean log power spectrum"
    spectrum_branch = True

    def __init__(self, config=None, overrides=None, spec=None) -> None:
        super().__init__(config, overrides, spec)
        if not self.spec.spectrum:
            raise UsageError(f"{self.name} needs a feature spec with the spectrum "
                             f"(spectrum = true); '{self.spec.name}' has none")
