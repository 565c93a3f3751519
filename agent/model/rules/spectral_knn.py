"""``spectral-knn``: a clip's sound statistics against the section's normal clips, in up to
five branches, each scored two ways, the component scores fused.

Branches (from the ``spectral-knn`` feature preset: mels and the log power spectrum per
frame; each one's vector is a function of the interval's windows, agent/features/):

* ``mel``: mean and standard deviation over time of each mel band (the envelope and how
  much it moves: broadband faults, modulation);
* ``spectrum``: mean over time of each of the 513 linear frequency bins (tonal lines and
  narrow resonances that mel pooling averages away: bearing and gear-mesh tones, shifts);
* ``modulation`` (agent/features/modulation.py): per band group, the envelope's modulation
  depth at 1-15.6 Hz (AM at the rotation rate, slow impact trains, cycles);
* ``temporal`` (agent/features/temporal.py): per band group, kurtosis and crest factor of
  frame power and the 90th/99th percentiles of frame energy above the median (impacts,
  rattles, clicks);
* ``cepstrum`` (agent/features/cepstrum.py): the real cepstrum at 0.5-8 ms quefrency of
  the interval's mean log spectrum, and its spread over the interval's windows (harmonic
  families, periodic impacts); a linear map of the window moments' spectrum means, so it
  needs no per-frame work.

Each branch vector is standardised with the training clips' statistics; its scores are
the Euclidean distance to the nearest normal training clip of the section (``knn``:
sharp where normal sound is dense) and the same distance in units of that clip's local
density (``density``, LDN: fair to a sparse domain, no domain label). Each score is put
on one scale with the mean and spread of the section's leave-one-out training scores,
then the weighted mean is taken (``fusion_weights``: two per branch the arrays carry, in
the order of ``ALL_BRANCHES``).

A bundle carries the arrays of the branches its variant weighs: ``{branch}_mean``,
``_std``, ``_bank``, ``_density``, ``_fusion``. One with only mel and spectrum (every
bundle written before the other three existed) scores exactly as before: its evidence rows
are the model's window moments. The model's part is only the moments of each window
(``moments`` output: per-value mean and standard deviation over the window's frames); the
rule pools the windows of an interval exactly (equal-size windows: variance = mean of
window variances + variance of window means), and the other branches' per-window rows are
computed here with numpy from the window itself (the model input), pooled as exactly, so an
interval's statistics do not depend on how it was cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from harken.agent.features.bands import band_power, n_groups
from harken.agent.features.cepstrum import pool_cepstrum, quefrencies
from harken.agent.features.modulation import n_lines, pool_modulation, window_modulation
from harken.agent.features.temporal import pool_temporal, row_width, window_temporal
from harken.agent.model.rules.base import BankRule, RuleError, register
from harken.agent.model.rules.density import distances, joined_densities, local_densities

BRANCHES = ("mel", "spectrum")        # the two every old bundle carries (moments only)
FRAME_BRANCHES = ("modulation", "temporal", "cepstrum")   # computed from the window's frames
ALL_BRANCHES = BRANCHES + FRAME_BRANCHES                  # the fixed order of the weights
PARTS = ("knn", "density")
COMPONENTS = tuple(f"{b}-{p}" for b in BRANCHES for p in PARTS)
ALL_COMPONENTS = tuple(f"{b}-{p}" for b in ALL_BRANCHES for p in PARTS)


def components(branches: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{b}-{p}" for b in branches for p in PARTS)


def present(names: Sequence[str] | Mapping) -> tuple[str, ...]:
    """The branches among ``names`` (vector keys, or array names ``{branch}_{role}``), in
    the fixed order."""
    keys = set(names)
    return tuple(b for b in ALL_BRANCHES
                 if b in keys or any(f"{b}_{r}" in keys for r in SpectralKnnRule.ROLES))


def window_moments(windows: np.ndarray) -> np.ndarray:
    """(n, frames, values) windows -> (n, 2 * values): mean, then std over the frames.
    The numpy reference of the bundle's graph."""
    w = np.asarray(windows, dtype=np.float64)
    return np.concatenate([w.mean(axis=1), w.std(axis=1)], axis=1)


def pooled_moments(moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over all frames of equal-size windows, from their (n, 2v) moments."""
    m = np.asarray(moments, dtype=np.float64)
    v = m.shape[1] // 2
    means, stds = m[:, :v], m[:, v:]
    mean = means.mean(axis=0)
    var = (stds ** 2).mean(axis=0) + means.var(axis=0)
    return mean, np.sqrt(np.maximum(var, 0.0))


def branch_vectors(mean: np.ndarray, std: np.ndarray, n_mels: int) -> dict[str, np.ndarray]:
    """A clip's (or interval's) mel and spectrum vectors from its pooled statistics."""
    return {"mel": np.concatenate([mean[:n_mels], std[:n_mels]]), "spectrum": mean[n_mels:]}


def frame_rows(windows: np.ndarray, n_mels: int, branches: Sequence[str],
               out: np.ndarray | None = None) -> np.ndarray:
    """(n, frames, features) windows -> (n, k) rows of the frame branches among
    ``branches`` (in FRAME_BRANCHES order), then one column holding ``frames`` (so an
    interval's rows say how to split them). The cepstrum has no rows of its own: it is a
    linear map of the moments' spectrum means (agent/features/cepstrum.py). ``out``: an
    (n, k) array to write them into (``window_evidence``'s, saving a copy)."""
    w = np.asarray(windows)
    n, frames = w.shape[:2]
    widths = frame_widths(frames, n_mels, w.shape[2] - n_mels)
    k = sum(widths[b] for b in FRAME_BRANCHES if b in branches)
    if out is None:
        out = np.empty((n, k + 1))
    out[:, k] = frames
    if "modulation" in branches or "temporal" in branches:
        power = band_power(w[:, :, :n_mels])             # once for both
        at = 0
        if "modulation" in branches:
            out[:, :widths["modulation"]] = window_modulation(power)
            at = widths["modulation"]
        if "temporal" in branches:
            out[:, at:at + widths["temporal"]] = window_temporal(power)
    return out


def window_evidence(moments: np.ndarray, windows: np.ndarray | None, n_mels: int,
                    branches: Sequence[str]) -> np.ndarray:
    """Evidence rows of a batch of windows: their moments (the model's output), then,
    when a frame branch is among ``branches``, its rows (``frame_rows``). Training's clip
    statistics and the device's intervals both call this."""
    m = np.asarray(moments, dtype=np.float64).reshape(len(moments), -1)
    if not any(b in FRAME_BRANCHES for b in branches):
        return m
    if windows is None:
        raise ValueError(f"branches {[b for b in branches if b in FRAME_BRANCHES]} need the "
                         f"model inputs (the windows)")
    w = np.asarray(windows).reshape(len(m), -1, m.shape[1] // 2)
    widths = frame_widths(w.shape[1], n_mels, w.shape[2] - n_mels)
    out = np.empty((len(m), m.shape[1] + sum(widths[b] for b in FRAME_BRANCHES
                                                 if b in branches) + 1))
    out[:, :m.shape[1]] = m
    frame_rows(w, n_mels, branches, out[:, m.shape[1]:])
    return out


def frame_widths(frames: int, n_mels: int, n_freqs: int) -> dict[str, int]:
    """Values per window row of each frame branch (the cepstrum's come from the moments)."""
    g = n_groups(n_mels)
    return {"modulation": g * n_lines(frames), "temporal": row_width(frames, g),
            "cepstrum": 0}


def vector_widths(frames: int, n_mels: int, n_freqs: int) -> dict[str, int]:
    """Values of each branch's vector (what its bank's rows hold)."""
    g = n_groups(n_mels)
    lo, hi = quefrencies(n_freqs)
    return {"mel": 2 * n_mels, "spectrum": n_freqs, "modulation": g * n_lines(frames),
            "temporal": 4 * g, "cepstrum": 2 * (hi - lo)}


def interval_vectors(evidence: np.ndarray, n_mels: int, n_features: int,
                     branches: Sequence[str]) -> dict[str, np.ndarray]:
    """The interval's (or clip's) vector of each of ``branches`` from its windows'
    evidence rows (``window_evidence`` with the same branches)."""
    e = np.asarray(evidence, dtype=np.float64)
    width = 2 * n_features
    out = branch_vectors(*pooled_moments(e[:, :width]), n_mels)
    out = {b: v for b, v in out.items() if b in branches}
    if not any(b in FRAME_BRANCHES for b in branches):
        return out
    frames = int(e[0, -1])
    widths = frame_widths(frames, n_mels, n_features - n_mels)
    at = width
    for b in FRAME_BRANCHES:
        if b not in branches:
            continue
        rows = e[:, at:at + widths[b]]
        at += widths[b]
        out[b] = (pool_modulation(rows) if b == "modulation" else
                  pool_temporal(rows, n_groups(n_mels)) if b == "temporal" else
                  pool_cepstrum(e[:, n_mels:n_features]))     # the windows' mean spectra
    if at != e.shape[1] - 1:
        raise ValueError(f"evidence rows of {e.shape[1]} values; branches {list(branches)} "
                         f"of {frames}-frame windows give {at + 1}")
    return out


def component_scores(z: np.ndarray, bank: np.ndarray, density: np.ndarray) -> np.ndarray:
    """(n, 2): distance to the nearest bank row, and the LDN distance (density.py), of
    standardised vectors ``z`` against a standardised bank."""
    d = distances(z, bank, "euclidean")
    return np.stack([d.min(axis=1), (d / density[None, :]).min(axis=1)], axis=1)


def fused_score(vectors: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray],
                weights: np.ndarray) -> np.ndarray:
    """The weighted mean of the standardised component scores (two per branch ``arrays``
    carry, in ALL_BRANCHES order) for (n, .) vectors per branch; ``arrays`` are one
    section's (see ``SpectralKnnRule.needs``)."""
    parts = []
    for b in present(arrays):
        z = (np.atleast_2d(vectors[b]) - arrays[f"{b}_mean"]) / arrays[f"{b}_std"]
        raw = component_scores(z, arrays[f"{b}_bank"], arrays[f"{b}_density"])
        loc, scale = arrays[f"{b}_fusion"][:2], arrays[f"{b}_fusion"][2:]
        parts.append((raw - loc) / scale)
    standard = np.concatenate(parts, axis=1)          # columns in components() order
    w = np.asarray(weights, dtype=np.float64)
    return standard @ w / w.sum()


def branch_statistics(vectors: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray,
                                                                             np.ndarray]]:
    """Per branch the mean and spread that standardise its vectors."""
    return {b: (v.mean(axis=0), v.std(axis=0) + 1e-6) for b, v in vectors.items()}


# a leave-one-out spread below this fraction of its mean (or of 1) is no spread: the scale
# would turn a normal interval's distance into 1e8
MIN_RELATIVE_SPREAD = 1e-6


def _check_spread(branch: str, loo: np.ndarray, density: np.ndarray) -> None:
    """Refuse a bank whose held-out scores do not vary, or some of whose references sit on
    top of others: dividing by that spread or density would make every normal interval
    score huge (docs/reliability.md "Numbers, banks and bundles")."""
    from harken.common.errors import DataError
    for j, part in enumerate(("knn", "density")):
        mean, spread = float(loo[:, j].mean()), float(loo[:, j].std())
        if not spread > MIN_RELATIVE_SPREAD * max(1.0, abs(mean)):
            raise DataError(
                f"the {len(loo)} clips or intervals give {branch}-{part} leave-one-out scores "
                f"that do not vary (spread {spread:.3g} around {mean:.6g}): each has a (near) "
                f"copy among the others, e.g. the same audio given twice; a scale from that "
                f"would make normal sound score huge. Give distinct recordings of normal "
                f"operation")
    tight = int((density <= MIN_RELATIVE_SPREAD * max(float(np.median(density)), 1e-9)).sum())
    if tight:
        raise DataError(
            f"{tight} of the {len(density)} clips or intervals of branch {branch} have their "
            f"nearest neighbours at (almost) zero distance: (near) copies of each other, e.g. "
            f"the same audio given twice; their density would make normal sound score huge. "
            f"Give distinct recordings of normal operation")


def fit_branches(vectors: Mapping[str, np.ndarray], stats: Mapping[str, tuple], density_k: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The rule's arrays of each branch in ``vectors`` (standardisation, bank, local
    densities, fusion scales) and per branch the clips' (n, 2) standardised leave-one-out
    component scores (each clip against the others)."""
    from harken.common.errors import DataError
    n = len(next(iter(vectors.values())))
    if n < 2:
        raise DataError(f"a reference bank needs at least 2 clips or intervals, got {n}")
    arrays: dict[str, np.ndarray] = {}
    parts: dict[str, np.ndarray] = {}
    for b in present(vectors):
        mean, std = stats[b]
        bank = (np.asarray(vectors[b], dtype=np.float64) - mean) / std
        density = local_densities(bank, density_k, "euclidean")
        d = distances(bank, bank, "euclidean")
        np.fill_diagonal(d, np.inf)
        loo = np.stack([d.min(axis=1), (d / density[None, :]).min(axis=1)], axis=1)
        _check_spread(b, loo, density)
        fusion = np.r_[loo.mean(axis=0), loo.std(axis=0)]
        arrays |= {f"{b}_mean": mean, f"{b}_std": std, f"{b}_bank": bank,
                   f"{b}_density": density, f"{b}_fusion": fusion}
        parts[b] = (loo - fusion[:2]) / fusion[2:]
    return arrays, parts


def fit_bank(vectors: Mapping[str, np.ndarray], stats: Mapping[str, tuple], density_k: int,
             weights) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One reference bank (a section's training clips, or audio enrolled on site): the
    arrays the rule needs, and the clips' leave-one-out fused scores (each clip scored
    against the others: held-out normal scores for the threshold). The device's enrollment
    and training both call this, so an enrolled bank is the bank training would build.
    ``vectors``: per branch (any of ALL_BRANCHES, taken in that order); ``weights``: two
    per branch."""
    from harken.common.errors import DataError
    branches = present(vectors)
    if len(weights) != 2 * len(branches):
        raise DataError(f"{len(weights)} fusion weights for the {len(branches)} branches "
                        f"{list(branches)}: expected {2 * len(branches)} (knn and density of "
                        f"each)")
    arrays, parts = fit_branches(vectors, stats, density_k)
    w = np.asarray(weights, dtype=np.float64)
    return arrays, np.concatenate([parts[b] for b in branches], axis=1) @ w / w.sum()


@register
class SpectralKnnRule(BankRule):
    name = "spectral-knn"
    output = "moments"
    needs = ("fusion_weights", "n_mels")     # and the arrays of each branch it carries
    ROLES = ("mean", "std", "bank", "density", "fusion")

    def validate(self) -> None:
        n_mels = np.asarray(self.arrays["n_mels"])
        if n_mels.shape != () or n_mels.dtype.kind not in "iu" or int(n_mels) < 1:
            raise RuleError(f"array 'n_mels' = {n_mels.tolist()!r}; expected one whole number "
                            f"above 0")
        self.branches = present(self.arrays)
        if not self.branches:
            raise RuleError(f"score rule 'spectral-knn' needs the arrays of at least one "
                            f"branch of {list(ALL_BRANCHES)} (e.g. 'mel_bank')")
        for b in self.branches:
            missing = [f"{b}_{r}" for r in self.ROLES if f"{b}_{r}" not in self.arrays]
            if missing:
                raise RuleError(f"score rule 'spectral-knn' needs arrays {missing} (branch {b})")
            for r in self.ROLES:
                a = np.asarray(self.arrays[f"{b}_{r}"])
                if a.dtype.kind not in "biuf":
                    raise RuleError(f"array '{b}_{r}' holds {a.dtype} values, not numbers")
                if a.dtype.kind == "f" and not np.isfinite(a).all():
                    raise RuleError(f"array '{b}_{r}' holds NaN or infinite values")
            v = self.shape_of(f"{b}_mean", 1)[0]
            if b == "mel":
                self.same("mel_mean", v, 2 * int(n_mels), "values (2 x n_mels)")
            if b == "temporal" and v % 4:
                raise RuleError(f"array 'temporal_mean' has {v} values; expected 4 per band "
                                f"group")
            self.same(f"{b}_std", self.shape_of(f"{b}_std", 1)[0], v, f"values (as {b}_mean)")
            self.positive(f"{b}_std")
            n, width = self.shape_of(f"{b}_bank", 2)
            self.same(f"{b}_bank", width, v, f"columns (as {b}_mean)")
            self.same(f"{b}_density", self.shape_of(f"{b}_density", 1)[0], n,
                      f"entries (the rows of {b}_bank)")
            self.positive(f"{b}_density")
            self.same(f"{b}_fusion", self.shape_of(f"{b}_fusion", 1)[0], 4,
                      "values (2 means, 2 spreads)")
            self.positive(f"{b}_fusion", np.asarray(self.arrays[f"{b}_fusion"])[2:])
        w = np.asarray(self.arrays["fusion_weights"], dtype=np.float64)
        self.same("fusion_weights", self.shape_of("fusion_weights", 1)[0],
                  2 * len(self.branches),
                  f"values (one per component {list(components(self.branches))})")
        if (w < 0).any() or w.sum() <= 0:
            raise RuleError(f"array 'fusion_weights' = {w.tolist()}: expected weights of at "
                            f"least 0 that do not sum to 0")

    def check_model(self, input_width: int, output_width: int) -> str | None:
        n_mels = int(self.arrays["n_mels"])
        if "spectrum" in self.branches:
            width = 2 * (n_mels + len(self.arrays["spectrum_mean"]))
            if output_width != width:
                return f"moments of {width} values (mean and std of {n_mels} mels and " \
                       f"{len(self.arrays['spectrum_mean'])} spectrum bins)"
        if output_width % 2 or output_width < 2 * n_mels:
            return f"moments of an even number of values, at least 2 x {n_mels} mels"
        features = output_width // 2
        if input_width % features:
            return f"windows of whole frames of {features} values"
        frames = input_width // features
        if frames < 2 and any(b in FRAME_BRANCHES for b in self.branches):
            return "windows of at least 2 frames for the frame branches"
        if "cepstrum" in self.branches and features - n_mels < 2:
            return "the log power spectrum after the mels (the cepstrum branch reads it)"
        want = vector_widths(frames, n_mels, features - n_mels)
        for b in self.branches:
            got = len(self.arrays[f"{b}_mean"])
            if got != want[b]:
                return f"windows whose {b} vector has {got} values; {frames}-frame windows " \
                       f"of {n_mels} mels and {features - n_mels} bins give {want[b]}"
        self.n_features = features
        return None

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        self.n_features = int(np.asarray(output).reshape(len(output), -1).shape[1] // 2)
        return window_evidence(output, inputs, int(self.arrays["n_mels"]), self.branches)

    def _n_features(self, evidence: np.ndarray) -> int:
        n_mels = int(self.arrays["n_mels"])
        if "spectrum" in self.branches:
            return n_mels + len(self.arrays["spectrum_mean"])
        if any(b in FRAME_BRANCHES for b in self.branches):
            n_features = getattr(self, "n_features", None)
            if n_features is None:
                raise ValueError("spectral-knn without its spectrum branch learns the frame "
                                 "width from the model (check_model) before scoring")
            return n_features
        return evidence.shape[1] // 2

    def statistics(self, evidence: np.ndarray) -> dict[str, np.ndarray]:
        # the pipeline asks for an interval's score and then for its statistics (the
        # feedback store): the vectors of the same evidence are pooled once
        last = getattr(self, "_last", None)
        if last is not None and last[0] is evidence:
            return last[1]
        vectors = interval_vectors(evidence, int(self.arrays["n_mels"]),
                                   self._n_features(evidence), self.branches)
        self._last = (evidence, vectors)
        return vectors

    def combine(self, evidence: np.ndarray) -> float:
        vectors = self.statistics(evidence)
        return float(fused_score(vectors, self.arrays, self.arrays["fusion_weights"])[0])

    # -- the reference bank (feedback: agent/operator/feedback.py) ---------------------
    def statistics_widths(self) -> dict[str, int]:
        return {b: len(self.arrays[f"{b}_mean"]) for b in self.branches}

    @property
    def bank_rows(self) -> int:
        return len(self.arrays[f"{self.branches[0]}_bank"])

    def with_references(self, rows: Mapping[str, np.ndarray], density_k: int) -> SpectralKnnRule:
        rows = self.check_rows(rows)
        arrays = dict(self.arrays)
        for b in self.branches:
            z = (rows[b] - arrays[f"{b}_mean"]) / arrays[f"{b}_std"]
            bank = np.concatenate([np.asarray(arrays[f"{b}_bank"], dtype=np.float64), z])
            arrays[f"{b}_bank"] = bank
            arrays[f"{b}_density"] = joined_densities(bank, self.arrays[f"{b}_density"],
                                                      density_k, "euclidean")
        rule = SpectralKnnRule(arrays)
        if hasattr(self, "n_features"):          # learnt from the model (check_model)
            rule.n_features = self.n_features
        return rule

    def held_out_scores(self) -> np.ndarray:
        parts = []
        for b in self.branches:
            bank, density = self.arrays[f"{b}_bank"], self.arrays[f"{b}_density"]
            d = distances(bank, bank, "euclidean")
            np.fill_diagonal(d, np.inf)
            loo = np.stack([d.min(axis=1), (d / density[None, :]).min(axis=1)], axis=1)
            fusion = self.arrays[f"{b}_fusion"]
            parts.append((loo - fusion[:2]) / fusion[2:])
        w = np.asarray(self.arrays["fusion_weights"], dtype=np.float64)
        return np.concatenate(parts, axis=1) @ w / w.sum()

    def score_statistics(self, rows: Mapping[str, np.ndarray]) -> np.ndarray:
        rows = self.check_rows(rows)
        return fused_score(rows, self.arrays, self.arrays["fusion_weights"])
