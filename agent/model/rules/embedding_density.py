"""``embedding-density``: the interval's mean embedding, cosine distance to each of the
section's normal training clips, each in units of that clip's local density (LDN,
density.py); the minimum. The domain-agnostic sibling of ``embedding``: no domain labels
in the bank, so a bank enrolled on site works the same way."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from harken.agent.model.rules.base import BankRule, register
from harken.agent.model.rules.density import (joined_densities, normalised_min_distance)
from harken.agent.model.rules.embedding import unit_embedding


@register
class EmbeddingDensityRule(BankRule):
    name = "embedding-density"
    output = "embedding"
    needs = ("bank", "bank_density", "embedding_mean", "embedding_std")

    def validate(self) -> None:
        n, e = self.shape_of("bank", 2)
        for name in ("embedding_mean", "embedding_std"):
            self.same(name, self.shape_of(name, 1)[0], e, "values (the bank's width)")
        self.positive("embedding_std")
        self.same("bank_density", self.shape_of("bank_density", 1)[0], n, "entries (the bank's rows)")
        self.positive("bank_density")

    def check_model(self, input_width: int, output_width: int) -> str | None:
        e = np.shape(self.arrays["bank"])[1]
        return None if output_width == e else f"an embedding of {e} values (the bank's width)"

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        return np.asarray(output, dtype=np.float64).reshape(len(output), -1)

    def combine(self, evidence: np.ndarray) -> float:
        a = self.arrays
        unit = unit_embedding(evidence.mean(axis=0), a["embedding_mean"], a["embedding_std"])
        return float(normalised_min_distance(unit, a["bank"], a["bank_density"], "cosine")[0])

    # -- the reference bank (feedback: agent/operator/feedback.py) ---------------------
    def statistics(self, evidence: np.ndarray) -> dict[str, np.ndarray]:
        """The interval's mean embedding: what enrollment keeps as ``raw_embedding``."""
        return {"embedding": np.asarray(evidence, dtype=np.float64).mean(axis=0)}

    def statistics_widths(self) -> dict[str, int]:
        return {"embedding": int(np.shape(self.arrays["bank"])[1])}

    @property
    def bank_rows(self) -> int:
        return int(np.shape(self.arrays["bank"])[0])

    def with_references(self, rows: Mapping[str, np.ndarray], density_k: int
                        ) -> EmbeddingDensityRule:
        rows = self.check_rows(rows)
        a = self.arrays
        unit = unit_embedding(rows["embedding"], a["embedding_mean"], a["embedding_std"])
        bank = np.concatenate([np.asarray(a["bank"], dtype=np.float64), unit])
        return EmbeddingDensityRule({**a, "bank": bank,
                                     "bank_density": joined_densities(bank, a["bank_density"],
                                                                      density_k)})

    def held_out_scores(self) -> np.ndarray:
        """As agent/site/enroll_embedding.py ``fit_embedding_bank`` scores its intervals."""
        bank = self.arrays["bank"]
        d = (1.0 - bank @ bank.T) / self.arrays["bank_density"][None, :]
        np.fill_diagonal(d, np.inf)
        return d.min(axis=1)

    def score_statistics(self, rows: Mapping[str, np.ndarray]) -> np.ndarray:
        rows = self.check_rows(rows)
        a = self.arrays
        unit = unit_embedding(rows["embedding"], a["embedding_mean"], a["embedding_std"])
        return normalised_min_distance(unit, a["bank"], a["bank_density"], "cosine")
