"""Anomaly-score rules: from model outputs per window to one score per report interval.

``make_rule(name, arrays)`` gives the registered rule (see ``base.py`` for the interface
and how to add one); ``outputs_of(name)`` the model outputs it reads (a rule may read
several, e.g. a latent code and its re-encoding, joined per window). Rules today:

* ``mse`` (mse.py): mean squared reconstruction error; interval = mean.
* ``mahalanobis`` (mahalanobis.py): selective Mahalanobis of the residual over domains.
* ``logit`` (logit.py): log-odds of the section's best class; interval = mean.
* ``embedding`` (embedding.py): cosine distance of the interval's mean embedding to the
  section's normal bank, in units of each domain's typical distance; the minimum.
* ``embedding-density`` (embedding_density.py): the same distance to every training clip,
  in units of that clip's local density (density.py: LDN, no domain labels needed).
* ``spectral-knn`` (spectral_knn.py): mel and spectrum statistics of the interval, nearest
  normal clip and LDN distances, standardised and fused.
* ``oevae``, ``oevae-alpha``, ``oevae-beta`` (oevae.py): OEVAE's latent -log p(z_c) and
  segment kNN cosine distance per window, standardised and mixed; interval = mean.
* ``aegan-<score>`` (aegan.py): AEGAN-AD's nine scores (x-*, z-*: a patch distance, interval
  = mean; d-maha, d-knn, d-lof: a distance of the interval's mean discriminator embedding).
* ``gmgan-latent``, ``gmm-energy``, ``latent-ldn`` (gmgan.py): GMGAN's latent
  re-encoding error, GMM energy (both window means) and the LDN distance of the mean code.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# importing a rule's module registers it: a new rule is one module and one name here
from harken.agent.model.rules.base import RuleError
from harken.agent.model.rules import (mse, mahalanobis, logit, embedding,  # noqa: F401
                                embedding_density, spectral_knn, oevae, aegan, gmgan)
from harken.agent.model.rules.base import REGISTRY, ScoreRule
from harken.agent.model.rules.embedding import bank_distance, unit_embedding
from harken.agent.model.rules.logit import section_log_odds, softmax
from harken.agent.model.rules.mahalanobis import mahalanobis as mahalanobis_distance

RULES: tuple[str, ...] = tuple(REGISTRY)

__all__ = ["RULES", "ScoreRule", "make_rule", "output_of", "outputs_of", "bank_distance",
           "unit_embedding",
           "section_log_odds", "softmax", "mahalanobis_distance"]


def _rule_class(name: str) -> type[ScoreRule]:
    if name not in REGISTRY:
        raise RuleError(f"unknown score rule {name!r}; known: {list(REGISTRY)}")
    return REGISTRY[name]


def make_rule(name: str, arrays: Mapping[str, np.ndarray] | None = None) -> ScoreRule:
    """The rule called ``name`` with its arrays (refused clearly if any is missing)."""
    return _rule_class(name)(arrays)


def output_of(name: str) -> str:
    """The model output rule ``name`` reads."""
    return _rule_class(name).output


def outputs_of(name: str) -> tuple[str, ...]:
    """Every model output rule ``name`` reads, in the order the scorer joins them (a rule
    with one output: ``(output_of(name),)``)."""
    return _rule_class(name).model_outputs()
