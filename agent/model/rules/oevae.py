"""OEVAE's scores (training/oevae.py, docs/export.md "OEVAE"): per window, alpha = -log
N(z_c; 0, I) at the VAE's posterior mean (output ``latent``) and beta = the mean cosine
distance of the embedding (output ``embedding``) to its k nearest training segments of the
section; each standardised with the training's held-out statistics and mixed,
``w * alpha' + (1 - w) * beta'``; the interval's score is the mean over its windows, as a
clip's is in training.

* ``oevae`` (``combined``): w = omega (array ``omega``).
* ``oevae-alpha``: w = 1; reads only ``latent``, needs no bank.
* ``oevae-beta``: w = 0; reads only ``embedding``.

Numpy only (the device's hot path): one (windows, bank) matrix product per batch.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from harken.agent.model.rules.base import RuleError, ScoreRule, register

LOG_2PI = float(np.log(2 * np.pi))


def alpha_scores(latent: np.ndarray) -> np.ndarray:
    """-log N(z; 0, I) of each row of ``latent`` (the content part z_c of the latent)."""
    z = np.asarray(latent, dtype=np.float64)
    return 0.5 * (z ** 2).sum(1) + 0.5 * z.shape[1] * LOG_2PI


def beta_scores(embedding: np.ndarray, unit_bank: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine distance of each row of ``embedding`` to its ``k`` nearest rows of the
    unit-length ``unit_bank``."""
    e = np.asarray(embedding, dtype=np.float64)
    unit = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
    d = 1.0 - unit @ np.asarray(unit_bank, dtype=np.float64).T
    return np.partition(d, k - 1, axis=1)[:, :k].mean(1) if k < d.shape[1] else d.mean(1)


class _OevaeRule(ScoreRule):
    """The three scores share this; ``weight`` is alpha's weight (None: array ``omega``)."""
    weight: ClassVar[float | None] = None

    def validate(self) -> None:
        stats = np.asarray(self.arrays["score_stats"], dtype=np.float64)
        self.same("score_stats", self.shape_of("score_stats", 1)[0], 4,
                  "values (alpha mean, alpha std, beta mean, beta std)")
        self.positive("score_stats", stats[[1, 3]])
        if self.weight is None:
            self.same("omega", self.shape_of("omega", 1)[0], 1, "values (alpha's weight)")
            w = float(np.asarray(self.arrays["omega"])[0])
            if not 0.0 <= w <= 1.0:
                raise RuleError(f"array 'omega' is {w:g}; expected a weight in [0, 1]")
        if "bank" in self.needs:
            n, e = self.bank_shape("bank")
            self.same("knn_k", self.shape_of("knn_k", 1)[0], 1, "values (k)")
            k = np.asarray(self.arrays["knn_k"])[0]
            if not (float(k).is_integer() and 1 <= k <= n):
                raise RuleError(f"array 'knn_k' is {k}; expected a whole number from 1 to "
                                f"{n} (the bank's rows)")
            norms = np.linalg.norm(np.asarray(self.arrays["bank"], dtype=np.float64), axis=1)
            if np.abs(norms - 1.0).max() > 1e-3:
                raise RuleError("array 'bank' holds rows that are not of unit length (the "
                                "training segments' unit embeddings are expected)")
        if "output_widths" in self.needs:
            self.same("output_widths", self.shape_of("output_widths", 1)[0], 2,
                      "values (embedding, latent)")
            widths = np.asarray(self.arrays["output_widths"])
            if widths[0] != e or widths[1] < 1:
                raise RuleError(f"array 'output_widths' is {widths.tolist()}; expected the "
                                f"bank's width {e} and a latent of at least 1 value")

    @property
    def alpha_weight(self) -> float:
        return float(self.arrays["omega"][0]) if self.weight is None else self.weight

    def widths(self, output_width: int) -> tuple[int, int]:
        """(embedding, latent) values per window, from the joined outputs' width."""
        if "bank" not in self.needs:
            return 0, output_width
        e = int(np.shape(self.arrays["bank"])[1])
        return e, output_width - e

    def check_model(self, input_width: int, output_width: int) -> str | None:
        if "output_widths" in self.needs:
            e, z = (int(v) for v in self.arrays["output_widths"])
            if output_width != e + z:
                return f"an embedding of {e} and a latent of {z} values ('output_widths')"
        elif "bank" in self.needs and self.widths(output_width)[1] != 0:
            return f"an embedding of {self.widths(output_width)[0]} values (the bank's width)"
        return None

    def check_model_outputs(self, input_width: int, widths: tuple[int, ...]) -> str | None:
        # the joined outputs are split at the embedding's width: each output is checked
        # against 'output_widths', not only their total (a swapped pair has the same total)
        if "output_widths" in self.needs:
            e, z = (int(v) for v in self.arrays["output_widths"])
            if tuple(widths) != (e, z):
                return f"an embedding of {e} and a latent of {z} values ('output_widths')"
            return None
        return self.check_model(input_width, sum(widths))

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        out = np.asarray(output, dtype=np.float64).reshape(len(output), -1)
        e, _ = self.widths(out.shape[1])
        ma, sa, mb, sb = np.asarray(self.arrays["score_stats"], dtype=np.float64)
        w = self.alpha_weight
        score = np.zeros(len(out))
        if w > 0:
            score += w * (alpha_scores(out[:, e:]) - ma) / sa
        if w < 1:
            k = int(np.asarray(self.arrays["knn_k"])[0])
            score += (1 - w) * (beta_scores(out[:, :e], self.arrays["bank"], k) - mb) / sb
        return score[:, None]

    def combine(self, evidence: np.ndarray) -> float:
        return float(np.mean(evidence[:, 0]))


@register
class OevaeRule(_OevaeRule):
    name = "oevae"
    output = "embedding"
    outputs = ("embedding", "latent")
    # the joined outputs are split at the embedding's width; the latent's is checked too
    needs = ("bank", "knn_k", "score_stats", "omega", "output_widths")


@register
class OevaeAlphaRule(_OevaeRule):
    name = "oevae-alpha"
    output = "latent"
    needs = ("score_stats",)
    weight = 1.0


@register
class OevaeBetaRule(_OevaeRule):
    name = "oevae-beta"
    output = "embedding"
    needs = ("bank", "knn_k", "score_stats")
    weight = 0.0
