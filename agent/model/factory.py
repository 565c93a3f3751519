"""Which scorer a bundle needs: a fused bundle scores through its members
(agent/model/fused.py), any other through its own model and rule (agent/model/scorer.py).
Kept apart from both so that neither imports the other's module."""

from __future__ import annotations

from harken.agent.model.backends import BackendPool
from harken.agent.model.bank import BankManifest
from harken.agent.model.bundle import Bundle
from harken.agent.model.fused import FusedScorer
from harken.agent.model.rules import ScoreRule
from harken.agent.model.scorer import BundleScorer


def make_scorer(bundle: Bundle, section: int, artifact: str | None = None, threads: int = 1,
                rule: ScoreRule | None = None, enrollment: BankManifest | None = None,
                pool: BackendPool | None = None) -> BundleScorer | FusedScorer:
    """The scorer of ``bundle``: a fused bundle's scores through its members
    (agent/model/fused.py), any other through its model and rule. With a ``pool``, machines
    running the same artifact share its backend."""
    if bundle.is_fused:
        return FusedScorer(bundle, section, artifact, threads, pool=pool)
    backend = pool.get(bundle.artifact(artifact), threads) if pool is not None else None
    return BundleScorer(bundle, section, artifact, threads, backend=backend, rule=rule,
                        enrollment=enrollment)
