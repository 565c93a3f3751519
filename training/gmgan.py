"""GMGAN (Chen et al., 2020): a GANomaly compression network whose latent space is shaped by
a Gaussian mixture estimation network (DAGMM), trained end to end.

Per batch: z = G_e(x), x' = G_d(z), z' = G_e'(x'), memberships gamma = softmax(MLP(z)); the
GMM (weights, means, covariances) is estimated from the batch's memberships and gives each
sample's energy E(z) = -log sum_k phi_k N(z; mu_k, Sigma_k). The generator side minimises

    w_i * L1(x, x') + w_a * adversarial + w_z * ||z - z'||^2
        + w_e * (lambda_1 * mean E(z) + lambda_2 * sum_k sum_j 1 / Sigma_k,jj)

with (w_i, w_a, w_z, w_e) = (1, 5, 1, 0.05) by default and the adversarial term GANomaly's
feature matching (squared difference of the discriminator's features of x and x'); the
discriminator is trained with binary cross-entropy, real x against x'.

Scores, all fitted on every run: ``latent`` = ||G_e(x) - G_e'(x')||^2 (the paper's), and
``energy`` = E(z) under the GMM fitted on all training windows after training (as DAGMM
does); a clip's score is the mean over its windows. ``latent-ldn`` is ours: the clip's mean
code z, standardised, against the section's training clips' codes by local-density
normalised distance (agent/model/rules/density.py). bench/probe_generative.py showed both paper
scores measure the operating point (a target-domain normal clip scores like a fault) while
energy still separates faults within the source domain; a distance in units of the
nearest training clips' own spacing does not need the target domain to sit near the source.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F

from harken.agent.features import FeatureSpec
from harken.common.errors import DataError, UsageError
from harken.common.readers import read_arrays
from harken.agent.model.rules.density import distances, local_densities
from harken.training.config import Count, Rate, TrainConfig, Weight, between
from harken.training.data.corpus import Clip
from harken.training.aegan import square_patches
from harken.training.data.windows import as_images, clip_features, stack_windows
from harken.training.method import DeviceGraph, WindowOutputs, clip_means
from harken.training.models.gmgan import Gmgan, GmganDevice
from harken.training.models.losses import gmm_covariance_penalty, gmm_energy, gmm_parameters
from harken.training.runs import RunError, RunInfo
from harken.training.torch_method import (MIN_HELD_OUT, ScoresEveryRule, TorchMethod, batched,
                                   load_array)
from harken.training.trainer import check_finite, fit_steps


# training score -> the agent rule that computes it on the device (agent/model/rules/gmgan.py)
DEVICE_RULES = {"latent": "gmgan-latent", "energy": "gmm-energy", "latent-ldn": "latent-ldn"}


@dataclass(frozen=True)
class GmganConfig(TrainConfig):
    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-4
    beta1: Annotated[float, between(0, 1, "Adam beta1", hi_open=True)] = 0.5
    patience: int = 4
    channels: Count = 16
    latent: Count = 16
    mixtures: Count = 4
    w_i: Weight = 1.0                  # L1 reconstruction
    w_a: Weight = 5.0                  # adversarial (feature matching)
    w_z: Weight = 1.0                  # latent representation loss
    w_e: Weight = 0.05                 # estimation network (energy + covariance penalty)
    lambda_energy: Weight = 0.1        # lambda_1 (DAGMM)
    lambda_cov: Weight = 0.005         # lambda_2 (DAGMM)
    jitter: Rate = 1e-6              # added to each covariance's diagonal
    score: Literal["latent", "energy", "latent-ldn"] = "latent"
    density_k: Count = 4                # latent-ldn: neighbours that measure local density
    # the square patch's side: mels = window frames. 128 gives the frames of the default
    # presets (128 mels), so that GMGAN can be a fusion member beside them (docs/export.md)
    patch: Count = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("channels", "latent", "mixtures", "density_k"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.patch < 8 or self.patch & (self.patch - 1):
            raise UsageError(f"patch must be a power of two >= 8 (the encoder halves it down "
                             f"to 4 x 4), got {self.patch}")
        if self.batch_size < 2 * self.mixtures:
            raise UsageError(f"batch_size ({self.batch_size}) is too small to estimate "
                             f"{self.mixtures} mixture components per batch")


class GmganMethod(ScoresEveryRule, TorchMethod):
    name = "gmgan"
    # two optimisers stepped by the method itself (trainer.fit_steps): not data parallel
    data_parallel = False
    serial_reason = ("trains with its own optimiser steps (a GAN's two players), which the "
                     "distributed loop does not cover")
    preset_name = "gmgan"
    config_cls = GmganConfig
    score_rules = ("latent", "energy", "latent-ldn")
    summary = "GMGAN: GANomaly compression network + GMM estimation network on the latent"
    score_chunk = 64

    def __init__(self, config: GmganConfig | None = None, overrides: list[str] | None = None,
                 spec: FeatureSpec | None = None) -> None:
        super().__init__(config, overrides, spec)
        if spec is None and self.config.patch != self.spec.n_mels:      # a run keeps its own
            self.spec = self.spec.replace(n_mels=self.config.patch,
                                          window_frames=self.config.patch)

    def architecture(self) -> dict:
        c = self.config
        return {"size": self.spec.n_mels, "channels": c.channels, "latent": c.latent,
                "mixtures": c.mixtures, "low": self.low, "high": self.high}

    def build_from(self, architecture: dict) -> Gmgan:
        return Gmgan(**architecture)

    def losses(self, net: Gmgan, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every term of the generator-side objective for one batch (and what D needs)."""
        cfg = self.config
        z, recon, z_aux, gamma = net(x)
        phi, mu, cov = gmm_parameters(z, gamma)
        _, feat_real = net.discriminator(x)
        _, feat_fake = net.discriminator(recon)
        terms = {"l1": F.l1_loss(recon, x),
                 "adversarial": (feat_real.detach().mean(0) - feat_fake.mean(0)).pow(2).mean(),
                 "latent": (z - z_aux).pow(2).sum(1).mean(),
                 "energy": gmm_energy(z, phi, mu, cov, cfg.jitter).mean(),
                 "covariance": gmm_covariance_penalty(cov)}
        terms["total"] = (cfg.w_i * terms["l1"] + cfg.w_a * terms["adversarial"]
                          + cfg.w_z * terms["latent"]
                          + cfg.w_e * (cfg.lambda_energy * terms["energy"]
                                       + cfg.lambda_cov * terms["covariance"]))
        terms["recon"] = recon
        return terms

    def train(self, clips: Sequence[Clip], run_dir: Path, progress: bool = True) -> RunInfo:
        cfg = self.config
        device = self.setup()
        feats, fit_idx, val_idx, x_fit, x_val = square_patches(self, clips, progress)
        net = Gmgan(**self.architecture()).to(device)
        self.model = net
        xt, xv = net.scale(as_images(x_fit)), net.scale(as_images(x_val))
        g_params = [p for n, p in net.named_parameters() if not n.startswith("discriminator.")]
        opt_g = torch.optim.Adam(g_params, cfg.lr, betas=(cfg.beta1, 0.999))
        opt_d = torch.optim.Adam(net.discriminator.parameters(), cfg.lr, betas=(cfg.beta1, 0.999))
        desc = f"{self.name} {clips[0].machine}"

        def batches(epoch: int):
            for idx in batched(len(xt), cfg.batch_size, self.generator):
                if len(idx) >= 2 * cfg.mixtures:
                    yield (xt[idx].to(device),)

        def step(batch) -> torch.Tensor:
            x = batch[0]
            terms = self.losses(net, x)
            check_finite(terms["total"], desc)
            opt_g.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt_g.step()
            real, _ = net.discriminator(x)
            fake, _ = net.discriminator(terms["recon"].detach())
            loss_d = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + \
                F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            return terms["total"].detach()

        def val_loss() -> float:
            """Reconstruction + latent terms on held-out windows (the energy of a batch GMM
            fitted on a validation batch says little about the model)."""
            total = 0.0
            for idx in batched(len(xv), 256):
                z, recon, z_aux, _ = net(xv[idx].to(device))
                total += float(cfg.w_i * F.l1_loss(recon, xv[idx].to(device), reduction="sum")
                               / recon[0].numel() + cfg.w_z * (z - z_aux).pow(2).sum())
            return total / len(xv)

        hist = fit_steps(net, batches, step, val_loss, cfg, device, progress, desc)
        self.model = net.cpu().eval()
        self._fit_gmm(xt)
        scores = self._scores(feats)             # every training clip, once
        sections = [c.section for c in clips]
        rows = self._fit_code_bank(scores["code"], sections)
        held_out = val_idx if len(val_idx) >= MIN_HELD_OUT else list(range(len(clips)))
        normal = self._held_out_normal(scores, sections, rows, held_out)
        run_dir.mkdir(parents=True, exist_ok=True)
        for key, value in self.gmm.items():
            np.save(run_dir / f"gmm_{key}.npy", value.numpy())
        np.savez(run_dir / "code_bank.npz", mean=self.code_mean, std=self.code_std,
                 **{f"bank_{s:02d}": b for s, b in self.code_bank.items()},
                 **{f"density_{s:02d}": d for s, d in self.code_density.items()})
        return self.save(run_dir, clips, hist, normal, {
            "normal_scores_from": "validation clips" if held_out is val_idx
            else "all training clips (too few validation clips)"},
            held_out_clips=[clips[i] for i in held_out])

    def _fit_gmm(self, x: torch.Tensor) -> None:
        """The GMM over every training window's z (DAGMM fits the scoring GMM once, on the
        training set, from the estimation network's memberships)."""
        zs, gammas = [], []
        with torch.no_grad():
            for idx in batched(len(x), 512):
                z, _, _, gamma = self.model(x[idx])
                zs.append(z.double())
                gammas.append(gamma.double())
        phi, mu, cov = gmm_parameters(torch.cat(zs), torch.cat(gammas))
        self.gmm = {"phi": phi, "mu": mu, "cov": cov}

    def _scores(self, feats: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Per clip: the two paper scores, and ``code``, the clip's mean z (n, latent)."""
        x, owner = stack_windows(feats, self.spec)
        latent, energy, codes = [], [], []
        with torch.no_grad():
            for idx in batched(len(x), 512):
                z, _, z_aux, _ = self.model(self.model.scale(as_images(x[idx.numpy()])))
                latent.append((z - z_aux).pow(2).sum(1).double().numpy())
                energy.append(gmm_energy(z.double(), self.gmm["phi"], self.gmm["mu"],
                                         self.gmm["cov"], self.config.jitter).numpy())
                codes.append(z.double().numpy())
        out = {"latent": np.concatenate(latent), "energy": np.concatenate(energy),
               "code": np.concatenate(codes)}
        return {k: np.stack([v[owner == i].mean(axis=0) for i in range(len(feats))])
                for k, v in out.items()}

    def _fit_code_bank(self, codes: np.ndarray, sections: Sequence[int]) -> list[int]:
        """The latent-ldn bank from the training clips' mean codes; returns each clip's row
        in its section's bank (to leave it out of its own held-out score)."""
        self.code_mean, self.code_std = codes.mean(axis=0), codes.std(axis=0) + 1e-6
        z = (codes - self.code_mean) / self.code_std
        sec = np.asarray(sections)
        self.code_bank = {int(s): z[sec == s] for s in np.unique(sec)}
        self.code_density = {s: local_densities(b, self.caps.cap(
            "density_k", self.config.density_k, len(b) - 1,
            f"the {len(b) - 1} other training clips of section {s:02d}"), "euclidean")
            for s, b in self.code_bank.items()}
        return [int(np.sum(sec[:i] == s)) for i, s in enumerate(sec)]

    def _ldn(self, codes: np.ndarray, sections: Sequence[int],
             leave_out: Sequence[int] | None = None) -> np.ndarray:
        """latent-ldn per clip; ``leave_out``: each clip's own row in its section's bank
        (training clips scored against the others, for held-out normal scores)."""
        z = (codes - self.code_mean) / self.code_std
        out = np.empty(len(z))
        for i, s in enumerate(sections):
            if s not in self.code_bank:
                raise DataError(f"section {s:02d} was not in the training data (trained "
                                f"sections: {sorted(self.code_bank)})")
            d = distances(z[i], self.code_bank[s], "euclidean")[0] / self.code_density[s]
            if leave_out is not None:
                d[leave_out[i]] = np.inf
            out[i] = d.min()
        return out

    def _held_out_normal(self, scores: dict[str, np.ndarray], sections: Sequence[int],
                         rows: Sequence[int], held_out: Sequence[int]) -> np.ndarray:
        """The default rule's scores of the held-out training clips (for the threshold)."""
        if self.default_rule != "latent-ldn":
            return scores[self.default_rule][held_out]
        # the clips are in the bank: each is scored against the others of its section
        return self._ldn(scores["code"][held_out], [sections[i] for i in held_out],
                         [rows[i] for i in held_out])

    def chunk_scores(self, clips: Sequence[Clip]) -> dict[str, np.ndarray]:
        scores = self._scores(clip_features(clips, self.spec, False))
        return {"latent": scores["latent"], "energy": scores["energy"],
                "latent-ldn": self._ldn(scores["code"], [c.section for c in clips])}

    def load_extra(self, run_dir: Path, info: RunInfo) -> None:
        self.low, self.high = info.architecture["low"], info.architecture["high"]
        self.gmm = {k: torch.from_numpy(load_array(run_dir, f"gmm_{k}.npy"))
                    for k in ("phi", "mu", "cov")}
        bank = read_arrays(run_dir / "code_bank.npz", ("mean", "std"), "the latent code bank",
                           error=RunError)
        self.code_mean, self.code_std = bank["mean"], bank["std"]
        self.code_bank = {int(k[5:]): bank[k] for k in bank if k.startswith("bank_")}
        self.code_density = {int(k[8:]): bank[k] for k in bank if k.startswith("density_")}

    # -- export (training/method.py's Exportable; docs/export.md "GMGAN") -----------------
    def device_graph(self) -> DeviceGraph:
        """Encoder only for ``energy`` and ``latent-ldn`` (they read z); the decoder and the
        auxiliary encoder too for ``latent`` (it reads z and z' = G_e'(G_d(z)))."""
        net = GmganDevice(self.model.eval(), aux=self.default_rule == "latent").eval()
        return DeviceGraph(net, (1, 1, self.spec.n_mels, self.spec.window_frames), net.outputs)

    def device_rule(self) -> str:
        return DEVICE_RULES[self.default_rule]

    def rule_arrays(self, section: int, rule: str | None = None) -> dict[str, np.ndarray]:
        """What agent/model/rules/gmgan.py needs to score ``section`` with training score
        ``rule`` (the run's default without one: export ships that)."""
        rule = rule or self.default_rule
        if rule == "latent":
            return {}
        if rule == "energy":
            return {"gmm_phi": self.gmm["phi"].numpy(), "gmm_mu": self.gmm["mu"].numpy(),
                    "gmm_cov": self.gmm["cov"].numpy(),
                    "jitter": np.array([self.config.jitter], dtype=np.float64)}
        if section not in self.code_bank:
            raise DataError(f"section {section:02d} was not in the training data (trained "
                            f"sections: {sorted(self.code_bank)})")
        return {"code_mean": self.code_mean, "code_std": self.code_std,
                "bank": self.code_bank[section], "bank_density": self.code_density[section]}

    def refit_rule_arrays(self, clips: Sequence[Clip], outputs: Sequence[WindowOutputs]
                          ) -> dict[int, dict[str, np.ndarray]] | None:
        """latent-ldn's bank and local densities (training/method.py ``RefitsRuleArrays``) as
        ``_fit_code_bank`` fits them, on the artifact's mean code z of each training clip.
        ``latent`` holds no arrays; ``energy``'s GMM is fitted from the estimation
        network's memberships, which the device graph does not compute: it stays the run's."""
        if self.default_rule != "latent-ldn":
            return None
        twin = copy.copy(self)          # the run's own bank stays as it is
        twin._fit_code_bank(clip_means(outputs, "latent"), [c.section for c in clips])
        return {s: twin.rule_arrays(s) for s in sorted(twin.code_bank)}
