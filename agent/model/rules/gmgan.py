"""GMGAN's three scores on the device (training/gmgan.py computes the same numbers in torch;
docs/export.md "GMGAN" says which output each reads and what arrays it ships).

* ``gmgan-latent`` (the method's default, training score ``latent``): per window
  ||z - G_e'(G_d(z))||^2 from the ``latent`` and ``latent_aux`` outputs; interval = mean.
* ``gmm-energy`` (training ``energy``): per window the GMM energy
  -log sum_k phi_k N(z; mu_k, Sigma_k + jitter I) of ``latent``, in float64 with a
  log-sum-exp; interval = mean. The Cholesky factors are made once, when the bundle opens.
* ``latent-ldn``: the interval's mean z, standardised, Euclidean distance to the section's
  training clips' codes in units of each one's local density (density.py); the minimum.
  A bank rule, so operator feedback can add normal intervals to it.

numpy only: these run on the device's hot path (one window at a time), where a
scipy or sklearn call would cost more than the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from harken.agent.model.rules.base import BankRule, RuleError, ScoreRule, register
from harken.agent.model.rules.density import (distances, joined_densities,
                                              normalised_min_distance)


def _rows(output: np.ndarray) -> np.ndarray:
    return np.asarray(output, dtype=np.float64).reshape(len(output), -1)


@register
class GmganLatentRule(ScoreRule):
    name = "gmgan-latent"
    output = "latent"
    outputs = ("latent", "latent_aux")

    def check_model(self, input_width: int, output_width: int) -> str | None:
        return None if output_width > 0 and output_width % 2 == 0 else \
            "a latent code and its re-encoding of the same width (an even total)"

    def check_model_outputs(self, input_width: int, widths: tuple[int, ...]) -> str | None:
        # evidence splits the joined outputs at half: the two must be equally wide
        if len(widths) != 2 or widths[0] < 1 or widths[0] != widths[1]:
            return "a latent code and its re-encoding of the same width"
        return None

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        rows = _rows(output)
        z, z_aux = np.split(rows, 2, axis=1)
        return ((z - z_aux) ** 2).sum(axis=1, keepdims=True)

    def combine(self, evidence: np.ndarray) -> float:
        return float(evidence[:, 0].mean())


def gmm_energy(z: np.ndarray, log_phi: np.ndarray, mu: np.ndarray, inv_chol: np.ndarray,
               log_det: np.ndarray) -> np.ndarray:
    """Per row of ``z`` (n, d): -log sum_k phi_k N(z; mu_k, Sigma_k), with the inverse
    Cholesky factors and log-determinants of the (jittered) covariances; log-sum-exp in
    float64, as training/models/losses.py ``gmm_energy`` does in torch."""
    d = z.shape[1]
    diff = z[:, None, :] - mu[None]                                  # (n, K, d)
    white = np.einsum("kij,nkj->nki", inv_chol, diff)
    log_normal = -0.5 * ((white ** 2).sum(-1) + log_det + d * math.log(2 * math.pi))
    a = log_phi + log_normal                                         # (n, K)
    top = a.max(axis=1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(a - top).sum(axis=1)))


@register
class GmmEnergyRule(ScoreRule):
    name = "gmm-energy"
    output = "latent"
    needs = ("gmm_phi", "gmm_mu", "gmm_cov", "jitter")

    def validate(self) -> None:
        k, d = self.shape_of("gmm_mu", 2)
        self.same("gmm_phi", self.shape_of("gmm_phi", 1)[0], k, "weights (gmm_mu's components)")
        shape = self.shape_of("gmm_cov", 3)
        if shape != (k, d, d):
            raise RuleError(f"array 'gmm_cov' has shape {list(shape)}; expected {[k, d, d]} "
                            f"(one d x d covariance per component of gmm_mu)")
        self.same("jitter", self.shape_of("jitter", 1)[0], 1, "values")
        phi = np.asarray(self.arrays["gmm_phi"], dtype=np.float64)
        if (phi < 0).any() or abs(phi.sum() - 1.0) > 1e-3:
            raise RuleError(f"array 'gmm_phi' must hold mixture weights (>= 0, summing to 1); "
                            f"they sum to {phi.sum():g}, the smallest is {phi.min():g}")
        cov = np.asarray(self.arrays["gmm_cov"], dtype=np.float64)
        if not np.allclose(cov, cov.transpose(0, 2, 1), rtol=1e-6, atol=1e-12):
            raise RuleError("array 'gmm_cov' holds a covariance that is not symmetric")
        jitter = float(np.asarray(self.arrays["jitter"])[0])
        if jitter < 0:
            raise RuleError(f"array 'jitter' is {jitter:g}; expected a value >= 0")
        try:
            chol = np.linalg.cholesky(cov + jitter * np.eye(d))
        except np.linalg.LinAlgError:
            raise RuleError("array 'gmm_cov' holds a covariance that is not positive "
                            "definite (even with the jitter): its Cholesky factor fails") from None
        # made once here: each window then costs one (K, d, d) product
        self._inv_chol = np.linalg.inv(chol)
        self._log_det = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        self._log_phi = np.log(np.maximum(phi, 1e-12))
        self._mu = np.asarray(self.arrays["gmm_mu"], dtype=np.float64)

    def check_model(self, input_width: int, output_width: int) -> str | None:
        d = np.shape(self.arrays["gmm_mu"])[1]
        return None if output_width == d else f"a latent code of {d} values (gmm_mu's width)"

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        return gmm_energy(_rows(output), self._log_phi, self._mu, self._inv_chol,
                          self._log_det)[:, None]

    def combine(self, evidence: np.ndarray) -> float:
        return float(evidence[:, 0].mean())


@register
class LatentLdnRule(BankRule):
    name = "latent-ldn"
    output = "latent"
    needs = ("code_mean", "code_std", "bank", "bank_density")

    def validate(self) -> None:
        n, d = self.bank_shape("bank")
        for name in ("code_mean", "code_std"):
            self.same(name, self.shape_of(name, 1)[0], d, "values (the bank's width)")
        self.positive("code_std")
        self.same("bank_density", self.shape_of("bank_density", 1)[0], n,
                  "entries (the bank's rows)")
        self.positive("bank_density")

    def check_model(self, input_width: int, output_width: int) -> str | None:
        d = np.shape(self.arrays["bank"])[1]
        return None if output_width == d else f"a latent code of {d} values (the bank's width)"

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        return _rows(output)

    def _standard(self, codes: np.ndarray) -> np.ndarray:
        a = self.arrays
        return (np.atleast_2d(codes) - a["code_mean"]) / a["code_std"]

    def combine(self, evidence: np.ndarray) -> float:
        return float(self.score_statistics({"latent": evidence.mean(axis=0)[None]})[0])

    # -- the reference bank (feedback: agent/operator/feedback.py) ---------------------
    def statistics(self, evidence: np.ndarray) -> dict[str, np.ndarray]:
        """The interval's mean code: what enrollment keeps as ``raw_latent``."""
        return {"latent": np.asarray(evidence, dtype=np.float64).mean(axis=0)}

    def statistics_widths(self) -> dict[str, int]:
        return {"latent": int(np.shape(self.arrays["bank"])[1])}

    @property
    def bank_rows(self) -> int:
        return int(np.shape(self.arrays["bank"])[0])

    def with_references(self, rows: Mapping[str, np.ndarray], density_k: int) -> LatentLdnRule:
        rows = self.check_rows(rows)
        a = self.arrays
        bank = np.concatenate([np.asarray(a["bank"], dtype=np.float64),
                               self._standard(rows["latent"])])
        return LatentLdnRule({**a, "bank": bank, "bank_density": joined_densities(
            bank, a["bank_density"], density_k, "euclidean")})

    def held_out_scores(self) -> np.ndarray:
        """Each bank row against the others, with the whole bank's densities: as
        training/gmgan.py ``_held_out_normal`` scores its held-out clips."""
        bank = np.asarray(self.arrays["bank"], dtype=np.float64)
        d = distances(bank, bank, "euclidean") / self.arrays["bank_density"][None, :]
        np.fill_diagonal(d, np.inf)
        return d.min(axis=1)

    def score_statistics(self, rows: Mapping[str, np.ndarray]) -> np.ndarray:
        rows = self.check_rows(rows)
        a = self.arrays
        return normalised_min_distance(self._standard(rows["latent"]), a["bank"],
                                       np.asarray(a["bank_density"], dtype=np.float64),
                                       "euclidean")
