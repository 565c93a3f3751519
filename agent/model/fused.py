"""A fused bundle on the device: every member bundle scores the same report interval from
the same frames, each score is standardised with its section's mean and std of held-out
normal training scores, and the weighted mean is the interval's score (training/fusion.py
computes the same on clips).

The frames come from one streaming front end (the members' shared spec,
``shared_front_end``): a member that reads only the mels takes the first ``n_mels``
columns, which are exactly the frames its own spec would give, so no member costs a
second FFT.
"""

from __future__ import annotations

import numpy as np

from harken.agent.model.backends import BackendPool
from harken.agent.model.bundle import Bundle
from harken.agent.model.scorer import BundleScorer


class FusedScorer:
    def __init__(self, bundle: Bundle, section: int, artifact: str | None = None,
                 threads: int = 1, pool: BackendPool | None = None) -> None:
        """``artifact``: the kind every member uses where it has it; a member without it
        (a weightless model ships float only) uses the same runtime's other precision."""
        bundle.check_section(section)
        fusion = bundle.manifest.fusion
        if artifact is None:
            # one runtime for every member: the first kind the agent prefers that any member
            # has (a member without it takes its runtime's other precision)
            artifact = bundle.kinds[0]
        self.bundle, self.section, self.enrollment = bundle, section, None
        self.members = []
        for m in fusion.members:
            member = bundle.members[m.name]
            kind = member.artifact(artifact, same_runtime=True)
            self.members.append(BundleScorer(
                member, section, kind.kind, threads,
                backend=pool.get(kind, threads) if pool is not None else None))
        scales = fusion.standardise[f"{section:02d}"]
        self.mean = np.array([scales[m.name][0] for m in fusion.members])
        self.std = np.array([scales[m.name][1] for m in fusion.members])
        w = np.array([m.weight for m in fusion.members])
        self.weights = w / w.sum()

    @property
    def backend_name(self) -> str:
        return "+".join(dict.fromkeys(m.backend_name for m in self.members))

    @property
    def artifact_kind(self) -> str:
        return "+".join(dict.fromkeys(m.artifact_kind for m in self.members))

    def warm_up(self) -> None:
        for m in self.members:
            m.warm_up()

    def member_scores(self, frames: np.ndarray) -> tuple[np.ndarray, int]:
        """Each member's own score of the frames, and the model windows that took."""
        scores, n = np.empty(len(self.members)), 0
        for i, m in enumerate(self.members):
            spec = m.bundle.spec
            scores[i], used = m.score_frames(frames[:, :spec.n_features])
            n += used
        return scores, n

    def fuse(self, member_scores: np.ndarray) -> float:
        return float(np.dot(self.weights, (member_scores - self.mean) / self.std))

    def score_frames(self, frames: np.ndarray) -> tuple[float, int]:
        scores, n = self.member_scores(frames)
        return self.fuse(scores), n

    def score_logmel(self, logmel: np.ndarray) -> float:
        return self.score_frames(logmel)[0]

