"""OEVAE (Hai et al., DCASE 2024): outlier exposure to learn machine-specific embeddings, a
VAE that separates domain shift from content in the latent, and kNN on the embeddings.

* Feature extractor: ResNet-18-style on 2-second log-mel segments (64 ms frames, 16 ms hop,
  ``n_mels`` bins), trained with a binary outlier-exposure loss: this machine type's segments
  against segments of the corpus's other machine types, 1:1 in every batch.
* VAE on the extractor's embeddings, trained jointly (``lambda_vae``). Its latent (64
  channels) is split: z_d (the first 8) is pulled towards N(k * v, 1), v being the clip's
  value of the attribute that shifts the domain (the first numeric file-name attribute:
  speed, load...; without one, the clip's mean power), standardised over the training clips;
  z_c towards N(0, 1). Score alpha = -log p(z_c) at the posterior mean: what is left after
  the domain's part is taken out.
* kNN (cosine, k in {1, 2, 4}) from the segment's embedding to the section's training
  segments gives beta. Final score = omega * alpha + (1 - omega) * beta, each standardised
  with the held-out normal training segments' scores; a clip's score is the mean over its
  2-second segments.
* Augmentation: mixup inside each half of the batch (the attribute value v is mixed with
  the same weight) and SMOTE filling each section's target-domain segments up to the
  source count (v interpolated with them).

The paper's extractor is a full ResNet-18 (base width 64); the default ``width=16`` keeps a
machine type's training to a few minutes on two CPU cores.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F

from harken.common.errors import DataError, UsageError
from harken.agent.features import PRESETS, FeatureSpec, preset
from harken.training.augment import mixup, smote_target
from harken.training.config import Count, Probability, Size, TrainConfig, Weight, at_least, between
from harken.training.data.corpus import Clip
from harken.training.data.pseudo_anomalies import other_machine_clips
from harken.training.data.windows import as_images, clip_features, stack_windows, validation_split
from harken.training.models.losses import kl_to_normal
from harken.training.method import DeviceGraph, WindowOutputs
from harken.training.models.oevae import Oevae, OevaeDevice
from harken.training.runs import RunInfo
from harken.training.torch_method import (MIN_HELD_OUT, ScoresEveryRule, TorchMethod, batched,
                                   load_array)
from harken.training.trainer import fit

LOG_2PI = float(np.log(2 * np.pi))
# the agent's rule (agent/model/rules/oevae.py) of each training score
DEVICE_RULES = {"combined": "oevae", "alpha": "oevae-alpha", "beta": "oevae-beta"}


@dataclass(frozen=True)
class OevaeConfig(TrainConfig):
    epochs: int = 10
    batch_size: int = 64              # half this machine type, half outliers
    segments_per_epoch: Size = 1024    # of this machine type (as many outliers); 0 = all
    n_mels: Annotated[int, at_least(8, "mel bands")] = 64
    width: Count = 16                   # ResNet-18 base width (paper: 64)
    latent: Count = 64
    domain_dims: Count = 8              # z_d channels
    # z_d prior mean = k_shift * v (v standardised)
    k_shift: Annotated[float, between(-100, 100, "standard deviations")] = 1.0
    shift_attribute: str = ""         # file-name attribute for v; "" = first numeric one
    lambda_vae: Weight = 0.1
    other_clips: Count = 60             # outlier-exposure clips per other machine type
    mixup_alpha: Weight = 0.2          # 0 = off
    smote: bool = True
    knn_k: Count = 1
    omega: Probability = 0.5
    score: Literal["combined", "alpha", "beta"] = "combined"
    # another preset's frames ("" = OEVAE's own, 64 ms / 16 ms at n_mels): a fused bundle
    # needs its members to compute the same frames (docs/export.md "OEVAE"); the segments
    # stay about 2 s long with a 1 s hop, at that preset's hop
    frames: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.knn_k not in (1, 2, 4):
            raise UsageError(f"knn_k must be 1, 2 or 4, got {self.knn_k}")
        if not 0.0 <= self.omega <= 1.0:
            raise UsageError(f"omega must be in [0, 1], got {self.omega}")
        if self.batch_size < 4:
            raise UsageError(f"batch_size must be at least 4, got {self.batch_size}")
        if self.other_clips < 1:
            raise UsageError("OEVAE needs outlier clips: other_clips must be at least 1")
        if self.frames and self.frames not in PRESETS:
            raise UsageError(f"frames must be a feature preset, got '{self.frames}'; choose "
                             f"one of {sorted(PRESETS)}")


def frames_like(own: FeatureSpec, name: str) -> FeatureSpec:
    """Preset ``name``'s frames (every field but the windowing) with OEVAE's segments:
    as many of its frames as span ``own``'s window, and a hop of as many seconds."""
    other = preset(name)
    seconds = (own.window_frames - 1) * own.hop_length + own.n_fft - other.n_fft
    frames = max(1, round(seconds / other.hop_length)) + 1
    hop = max(1, round(own.window_hop * own.hop_length / other.hop_length))
    return other.replace(spectrum=False, window_frames=frames, window_hop=hop, name=f"oevae-{name}")


def shift_values(clips: Sequence[Clip], feats: Sequence[np.ndarray], attribute: str
                 ) -> tuple[np.ndarray, str]:
    """Per clip, the raw value of the attribute causing domain shift, and what it is."""
    def numeric(c: Clip, key: str) -> float | None:
        try:
            return float(c.attributes[key])
        except (KeyError, ValueError):
            return None
    keys = [attribute] if attribute else list(clips[0].attributes)
    for key in keys:
        values = [numeric(c, key) for c in clips]
        if all(v is not None for v in values):
            return np.array(values), f"attribute '{key}'"
    if attribute:
        bad = next(c for c in clips if numeric(c, attribute) is None)
        raise UsageError(f"{bad.path}: no numeric attribute '{attribute}' in the file name "
                         f"(shift_attribute); attributes: {bad.attributes or 'none'}")
    return np.array([float(m.mean()) for m in feats]), "mean power (dB)"


class OevaeMethod(ScoresEveryRule, TorchMethod):
    name = "oevae"
    preset_name = "oevae"
    config_cls = OevaeConfig
    score_rules = ("combined", "alpha", "beta")
    summary = "OEVAE: outlier-exposure ResNet + domain-split VAE + kNN (Hai et al.)"

    def __init__(self, config=None, overrides=None, spec: FeatureSpec | None = None) -> None:
        super().__init__(config, overrides, spec)
        if spec is None and self.config.frames:
            self.spec = frames_like(self.spec, self.config.frames)
        elif spec is None and self.spec.n_mels != self.config.n_mels:
            self.spec = dataclasses.replace(self.spec, n_mels=self.config.n_mels)
        self.bank: dict[int, np.ndarray] = {}
        self.stats = np.array([0.0, 1.0, 0.0, 1.0])     # alpha mean, std, beta mean, std

    def architecture(self) -> dict:
        c = self.config
        return {"width": c.width, "latent": c.latent, "domain_dims": c.domain_dims,
                "mean": self.input_mean, "std": self.input_std}

    def build_from(self, architecture: dict) -> Oevae:
        return Oevae(**architecture)

    # -- training ----------------------------------------------------------------------------
    def train(self, clips: Sequence[Clip], run_dir: Path, progress: bool = True) -> RunInfo:
        cfg = self.config
        device = self.setup()
        outliers = other_machine_clips(clips, cfg.other_clips, cfg.seed)
        if not outliers:
            raise UsageError(f"{clips[0].path.parents[2]}: OEVAE's outlier exposure needs other "
                             "machine types in the corpus; this one has only "
                             f"'{clips[0].machine}'")
        feats = clip_features(clips, self.spec, progress)
        out_feats = clip_features(outliers, self.spec, progress, desc="outlier clips")
        raw_v, v_source = shift_values(clips, feats, cfg.shift_attribute)
        v_mean, v_std = float(raw_v.mean()), float(raw_v.std()) or 1.0
        v_clip = ((raw_v - v_mean) / v_std).astype(np.float32)
        fit_idx, val_idx = validation_split(clips, cfg.val_fraction, cfg.seed)
        x_fit, owner = stack_windows([feats[i] for i in fit_idx], self.spec)
        v_fit = v_clip[np.asarray(fit_idx)][owner]
        if cfg.smote:
            x_fit, v_fit = self._smote_target(x_fit, v_fit, [clips[fit_idx[o]] for o in owner])
        x_out, _ = stack_windows(out_feats, self.spec)
        x_val, val_owner = stack_windows([feats[i] for i in (val_idx or fit_idx)], self.spec)
        v_val = v_clip[np.asarray(val_idx or fit_idx)][val_owner]
        self.input_mean, self.input_std = float(x_fit.mean()), float(x_fit.std()) + 1e-6
        net = Oevae(**self.architecture()).to(device)
        self.model = net
        xt, vt, xo = as_images(x_fit), torch.from_numpy(v_fit), as_images(x_out)
        xv, vv = as_images(x_val), torch.from_numpy(v_val)
        half = cfg.batch_size // 2
        g = self.generator

        def batches(epoch: int):
            n = len(xt)
            pick = (torch.randint(0, n, (cfg.segments_per_epoch,), generator=g)
                    if 0 < cfg.segments_per_epoch < n else torch.randperm(n, generator=g))
            for start in range(0, len(pick), half):
                idx = pick[start:start + half]
                if len(idx) < 2:
                    continue
                x_own, v_own = xt[idx], vt[idx][:, None]
                x_oe = xo[torch.randint(0, len(xo), (len(idx),), generator=g)]
                if cfg.mixup_alpha > 0:
                    x_own, v_own = mixup(x_own, v_own, g, cfg.mixup_alpha)
                    x_oe, _ = mixup(x_oe, torch.zeros(len(x_oe), 1), g, cfg.mixup_alpha)
                yield (torch.cat([x_own, x_oe]).to(device), v_own[:, 0].to(device))

        def loss_fn(batch) -> torch.Tensor:
            x, v = batch
            n_own = len(v)
            logit, emb = net(x)
            target = torch.cat([torch.ones(n_own), torch.zeros(len(x) - n_own)]).to(x.device)
            return F.binary_cross_entropy_with_logits(logit.float(), target) + \
                cfg.lambda_vae * self.vae_loss(emb[:n_own].float(), v, g).mean()

        def val_loss() -> float:
            total = 0.0
            for idx in batched(len(xv), 256):
                x = xv[idx].to(device)
                logit, emb = net(x)
                total += float(F.binary_cross_entropy_with_logits(
                    logit.float(), torch.ones(len(x), device=device), reduction="sum")
                    + cfg.lambda_vae * self.vae_loss(emb.float(), vv[idx].to(device)).sum())
            for idx in batched(min(len(xo), len(xv)), 256):
                logit, _ = net(xo[idx].to(device))
                total += float(F.binary_cross_entropy_with_logits(
                    logit.float(), torch.zeros(len(idx), device=device), reduction="sum"))
            return total / len(xv)

        def shard(batch, rank: int, world: int):
            """Across processes: this rank's equal slice of the own clips' rows and of the
            outlier rows (a batch is own rows then as many outlier rows)."""
            x, v = batch
            per = len(v) // world
            if per < 2:
                return None
            own, oe = slice(rank * per, (rank + 1) * per), slice(len(v) + rank * per,
                                                                 len(v) + (rank + 1) * per)
            return torch.cat([x[own], x[oe]]), v[own]

        hist = fit(net, batches, loss_fn, val_loss, cfg, device, progress,
                   desc=f"{self.name} {clips[0].machine}", shard=shard)
        self.model = net.cpu().eval()
        held_out = val_idx if len(val_idx) >= MIN_HELD_OUT else list(range(len(clips)))
        self.bank = self._bank([feats[i] for i in fit_idx], [clips[i] for i in fit_idx])
        alpha, beta = self._segment_scores([feats[i] for i in held_out],
                                           [clips[i] for i in held_out])
        a, b = np.concatenate(alpha), np.concatenate(beta)
        self.stats = np.array([a.mean(), a.std() + 1e-9, b.mean(), b.std() + 1e-9])
        normal = self._clip_scores(alpha, beta, self.default_rule)
        self.bank = self._bank(feats, clips)
        run_dir.mkdir(parents=True, exist_ok=True)
        for s, bank in self.bank.items():
            np.save(run_dir / f"bank_section_{s:02d}.npy", bank)
        np.save(run_dir / "score_stats.npy", self.stats)
        # the held-out clips' scores kept per clip: a fusion standardises OEVAE with them
        return self.save(run_dir, clips, hist, normal, {
            "outlier_clips": len(outliers),
            "domain_shift_value": {"from": v_source, "mean": v_mean, "std": v_std},
            "normal_scores_from": "validation clips" if held_out is val_idx
            else "all training clips (too few validation clips)"},
            held_out_clips=[clips[i] for i in held_out])

    def vae_loss(self, emb: torch.Tensor, v: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        """Per sample: squared reconstruction error of the embedding + KL of z_d to
        N(k * v, 1) + KL of z_c to N(0, 1)."""
        vae = self.model.vae
        recon, mu, logvar = vae(emb, generator)
        d = vae.domain_dims
        prior = self.config.k_shift * v[:, None]
        return ((recon - emb) ** 2).sum(1) + kl_to_normal(mu[:, :d], logvar[:, :d], prior) + \
            kl_to_normal(mu[:, d:], logvar[:, d:])

    def _smote_target(self, x: np.ndarray, v: np.ndarray, clips: Sequence[Clip]
                      ) -> tuple[np.ndarray, np.ndarray]:
        """SMOTE over (segment, v) per section's target domain, up to its source count."""
        section = np.array([c.section for c in clips])
        target = np.array([c.domain == "target" for c in clips])
        both = np.concatenate([x.reshape(len(x), -1), v[:, None]], 1)
        made, _ = smote_target(both, section, section, target,
                               np.random.default_rng(self.config.seed))
        return (np.concatenate([x, made[:, :-1].reshape(len(made), *x.shape[1:]).astype(x.dtype)]),
                np.concatenate([v, made[:, -1]]).astype(np.float32))

    # -- scoring -----------------------------------------------------------------------------
    def _embed(self, feats: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per segment: embedding, posterior mean of z_c; and each segment's clip number."""
        x, owner = stack_windows(feats, self.spec)
        embs, zc = [], []
        with torch.no_grad():
            for idx in batched(len(x), 256):
                _, e = self.model(as_images(x[idx.numpy()]))
                mu, _ = self.model.vae.encoder(e).chunk(2, dim=1)
                embs.append(e.double().numpy())
                zc.append(mu[:, self.model.vae.domain_dims:].double().numpy())
        return np.concatenate(embs), np.concatenate(zc), owner

    def _bank(self, feats: Sequence[np.ndarray], clips: Sequence[Clip]) -> dict[int, np.ndarray]:
        """Unit embeddings of every training segment, per section."""
        emb, _, owner = self._embed(feats)
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
        sections = np.array([clips[o].section for o in owner])
        return {int(s): unit[sections == s] for s in np.unique(sections)}

    def _segment_scores(self, feats: Sequence[np.ndarray], clips: Sequence[Clip]
                        ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per clip: alpha = -log N(z_c; 0, I) and beta = mean cosine distance to the k
        nearest training segments of the section, for each of its segments."""
        emb, zc, owner = self._embed(feats)
        alpha = 0.5 * (zc ** 2).sum(1) + 0.5 * zc.shape[1] * LOG_2PI
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
        alphas, betas = [], []
        for i, c in enumerate(clips):
            if c.section not in self.bank:
                raise UsageError(f"{c.path}: section {c.section:02d} was not in the training "
                                 f"data (trained sections: {sorted(self.bank)})")
            bank = self.bank[c.section]
            d = 1.0 - unit[owner == i] @ bank.T
            k = self.caps.cap("knn_k", self.config.knn_k, bank.shape[0],
                              f"the {bank.shape[0]} bank entries of section {c.section:02d}")
            alphas.append(alpha[owner == i])
            betas.append(np.sort(d, axis=1)[:, :k].mean(1))
        return alphas, betas

    def _clip_scores(self, alpha: list[np.ndarray], beta: list[np.ndarray], rule: str
                     ) -> np.ndarray:
        ma, sa, mb, sb = self.stats
        w = {"combined": self.config.omega, "alpha": 1.0, "beta": 0.0}[rule]
        return np.array([np.mean(w * (a - ma) / sa + (1 - w) * (b - mb) / sb)
                         for a, b in zip(alpha, beta)])

    def chunk_scores(self, clips: Sequence[Clip]) -> dict[str, np.ndarray]:
        alpha, beta = self._segment_scores(clip_features(clips, self.spec, False), clips)
        return {r: self._clip_scores(alpha, beta, r) for r in self.score_rules}

    # -- export (training/method.py's Exportable; docs/export.md "OEVAE") ------------------
    def device_graph(self) -> DeviceGraph:
        """Standardisation + the ResNet's features -> ``embedding``; the VAE encoder's
        posterior mean of z_c -> ``latent`` (the OE head and the decoder are training only)."""
        return DeviceGraph(OevaeDevice(self.model.eval()).eval(),
                           (1, 1, self.spec.n_mels, self.spec.window_frames),
                           ("embedding", "latent"))

    def device_rule(self) -> str:
        return DEVICE_RULES[self.default_rule]

    def rule_arrays(self, section: int, rule: str | None = None) -> dict[str, np.ndarray]:
        """The device rule's arrays for ``section``: the section's unit segment bank
        (float32: half the size, cosine distances move by about 1e-7), k as training capped
        it to the bank, the standardisation of alpha and beta and, for ``combined``, alpha's
        weight omega and the widths of the two outputs it reads joined (the ``alpha`` and
        ``beta`` rules weigh 1 and 0 and need less)."""
        score = next((k for k, v in DEVICE_RULES.items() if v == rule), None) if rule \
            else self.default_rule
        if score is None:
            raise UsageError(f"{self.name} has no device rule {rule!r}; "
                             f"choose one of {list(DEVICE_RULES.values())}")
        if section not in self.bank:
            raise DataError(f"section {section:02d} was not in the training data "
                            f"(trained sections: {sorted(self.bank)})")
        arrays = {"score_stats": np.asarray(self.stats, np.float64)}
        if score == "combined":
            arrays["omega"] = np.array([self.config.omega], np.float64)
            c = self.config
            arrays["output_widths"] = np.array([self.model.extractor.embedding_dim,
                                                c.latent - c.domain_dims], np.int64)
        if score != "alpha":
            bank = self.bank[section]
            arrays["bank"] = np.ascontiguousarray(bank, np.float32)
            arrays["knn_k"] = np.array([max(1, min(self.config.knn_k, len(bank)))], np.int64)
        return arrays

    def refit_rule_arrays(self, clips: Sequence[Clip], outputs: Sequence[WindowOutputs]
                          ) -> dict[int, dict[str, np.ndarray]] | None:
        """The segment bank (training/method.py ``RefitsRuleArrays``) as ``_bank`` makes it,
        from the artifact's embedding of every training segment; alpha reads no bank, and
        the standardisation of alpha and beta stays the run's (fitted on held-out clips
        against the fit clips' bank, which a refit cannot replay)."""
        if self.default_rule == "alpha":
            return None
        emb = np.concatenate([np.asarray(o["embedding"], np.float64).reshape(
            len(o["embedding"]), -1) for o in outputs])
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
        sections = np.concatenate([[c.section] * len(o["embedding"])
                                   for c, o in zip(clips, outputs)])
        twin = copy.copy(self)          # the run's own bank stays as it is
        twin.bank = {int(s): unit[sections == s] for s in np.unique(sections)}
        return {s: twin.rule_arrays(s) for s in sorted(twin.bank)}

    def load_extra(self, run_dir: Path, info: RunInfo) -> None:
        self.input_mean = info.architecture["mean"]
        self.input_std = info.architecture["std"]
        self.bank = {int(s): load_array(run_dir, f"bank_section_{int(s):02d}.npy")
                     for s in info.sections}
        self.stats = load_array(run_dir, "score_stats.npy")
