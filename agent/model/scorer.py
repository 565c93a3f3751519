"""Bundle + backend + rule: feature windows in, evidence rows and interval scores out.

The one scoring path of the product: the agent's live loop, ``harken-export verify`` and the
third-party import test all score through ``BundleScorer``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from harken.agent.model.backends import Backend, open_backend
from harken.agent.model.bank import BankManifest
from harken.agent.model.bundle import Artifact, Bundle, BundleError
from harken.agent.features import windows
from harken.agent.model.rules import ScoreRule
from harken.common.errors import HarkenError


def model_input(window: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One (frames, mels) window -> the model's input: the AE's frame-major vector (2-D
    shapes), or the CNN's (mels, frames) image with whatever singleton axes ``shape`` has
    (NCHW for ONNX, NHWC for TFLite: with one channel both are the same memory)."""
    if len(shape) == 2:
        return np.ascontiguousarray(window, dtype=np.float32).reshape(shape)
    return np.ascontiguousarray(window.T, dtype=np.float32).reshape(shape)


def probe_run(backend: Backend, artifact: Artifact) -> dict[str, np.ndarray]:
    """The model's outputs on a window of zeros: what the model file really gives, whatever
    its metadata says (a dynamic axis, a re-exported model), learnt before the first
    interval; a model that fails on the manifest's input shape is refused naming its file."""
    try:
        return backend.run(np.zeros(artifact.input_shape, np.float32))
    except Exception as exc:      # noqa: BLE001 - each runtime raises its own types
        raise BundleError(f"{artifact.path}: the model fails on an input of the manifest's "
                          f"shape {list(artifact.input_shape)} ({exc})") from None


def probe(backend: Backend, artifact: Artifact, output: str) -> int:
    """The number of values ``output`` has per window, from one run of the model on a
    window of zeros (``probe_run``)."""
    return output_width(probe_run(backend, artifact), artifact, output)


def output_width(got: dict[str, np.ndarray], artifact: Artifact, output: str) -> int:
    """Values per window of ``output`` in one model run; a model without it is refused."""
    if output not in got:
        raise BundleError(f"{artifact.path}: gives no '{output}' output (it gives "
                          f"{sorted(got)})")
    return int(np.asarray(got[output]).size)


def joined_output(got: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """The rule's one ``output`` array from a model run: the named output, or several
    outputs flattened and joined in the rule's order (agent/model/rules/base.py
    ``ScoreRule.outputs``: a GAN's latent code and its re-encoding)."""
    if len(names) == 1:
        return got[names[0]]
    return np.concatenate([np.asarray(got[n]).reshape(1, -1) for n in names], axis=1)


def check_outputs(backend: Backend, artifact: Artifact, rule: ScoreRule) -> None:
    """Refuse, naming the model file, a model whose outputs are not as wide as the rule's
    arrays need (an embedding of 64 values against a bank of 128-value rows would raise at
    the first interval, a reconstruction of the wrong width would broadcast into nonsense),
    then one whose probe window scores NaN or infinity with the rule's arrays
    (``check_probe_score``). A rule that reads several outputs is checked on each one's
    width (``ScoreRule.check_model_outputs``): a total alone let a latent of 14 values and
    a re-encoding of 18 through, or a manifest whose outputs were swapped."""
    names = rule.model_outputs()
    got = probe_run(backend, artifact)
    widths = tuple(output_width(got, artifact, n) for n in names)
    input_width = int(np.prod(artifact.input_shape))
    problem = rule.check_model_outputs(input_width, widths)
    if problem:
        said = f"output '{names[0]}' has {widths[0]} values" if len(names) == 1 else \
            "outputs " + ", ".join(f"'{n}' {w}" for n, w in zip(names, widths)) + " values"
        raise BundleError(f"{artifact.path}: {said} per window, but score rule "
                          f"'{rule.name}' with this bundle's arrays needs {problem} "
                          f"(manifest 'artifacts.{artifact.kind}')")
    x = np.zeros((1, input_width), np.float32)
    check_probe_score(rule, x, joined_output(got, names).reshape(1, -1), artifact)


def check_probe_score(rule: ScoreRule, inputs: np.ndarray, output: np.ndarray,
                      artifact: Artifact) -> None:
    """Refuse a bundle whose arrays give a non-finite score on the probe window. Arrays
    that are each finite can still overflow together (a mean of 1e300, a std of 1e-320,
    a dB range of +-1e308): every interval would then be "not scored" with no error, so
    the rule's own arithmetic is run once on the probe's output when the bundle opens
    (docs/export.md "Refusals when a generative bundle opens"). One window: the cost of
    one interval's evidence."""
    with np.errstate(all="ignore"):
        try:
            score = rule.reduce(rule.evidence(inputs, output))
        except HarkenError:       # the rule declines this window (nothing to judge on)
            return
        except (ArithmeticError, ValueError) as exc:
            score, why = float("nan"), f" ({exc})"
        else:
            why = ""
    if not np.isfinite(score):
        hint = rule.overflowing_array()
        raise BundleError(f"{artifact.path.parent}: the bundle's arrays give a non-finite "
                          f"score on a probe window: score rule '{rule.name}'{why}"
                          + (f", array '{hint}' is the likely cause" if hint else ""))


class Scorer(Protocol):
    """What the pipeline scores a report interval with: ``BundleScorer`` (one model),
    ``FusedScorer`` (agent/model/fused.py: several), enrollment's ``IntervalStatistics``
    (agent/site/enroll.py: keeps statistics instead)."""
    bundle: Bundle

    @property
    def backend_name(self) -> str: ...

    def score_frames(self, frames: np.ndarray) -> tuple[float, int]:
        """(score, model windows used) of one interval's (frames, features) frames."""


class BundleScorer:
    def __init__(self, bundle: Bundle, section: int, artifact: str | None = None,
                 threads: int = 1, backend: Backend | None = None,
                 rule: ScoreRule | None = None,
                 enrollment: BankManifest | None = None) -> None:
        """``rule``: instead of the bundle's own (a general bundle's enrolled bank);
        ``enrollment``: that bank's manifest (agent/model/bank.py), for status and threshold."""
        self.bundle = bundle
        self.enrollment = enrollment
        self.artifact = bundle.artifact(artifact)
        self.backend = backend or open_backend(self.artifact, threads)
        self.rule = rule or bundle.rule(section, self.artifact.kind)
        self.section = section
        check_outputs(self.backend, self.artifact, self.rule)     # before the first interval

    def evidence(self, feature_windows: np.ndarray) -> np.ndarray:
        """(n, frames, mels) windows -> (n, k) evidence rows (see agent/model/rules/)."""
        shape = self.artifact.input_shape
        names = self.rule.model_outputs()
        rows = []
        for w in feature_windows:
            x = model_input(w, shape)
            y = joined_output(self.backend.run(x), names)
            rows.append(self.rule.evidence(x.reshape(1, -1), y.reshape(1, -1)))
        k = rows[0].shape[1] if rows else 1
        return np.concatenate(rows) if rows else np.empty((0, k))

    def reduce(self, evidence: np.ndarray) -> float:
        return self.rule.reduce(evidence)

    def statistics(self, evidence: np.ndarray) -> dict[str, np.ndarray] | None:
        """The interval's bank statistics (what feedback adds to the bank), for a rule that
        scores against a bank (agent/model/rules/base.py ``BankRule``); None otherwise."""
        take = getattr(self.rule, "statistics", None)
        return take(evidence) if take is not None else None

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def artifact_kind(self) -> str:
        return self.artifact.kind

    def warm_up(self) -> None:
        """Pay the runtime's one-off first-call costs (the TFLite delegate, ONNX
        Runtime's first run) before the first interval is timed."""
        self.backend.run(np.zeros(self.artifact.input_shape, np.float32))

    def score_frames(self, frames: np.ndarray) -> tuple[float, int]:
        """(score, windows scored) of (frames, features) feature frames."""
        w = windows(frames, self.bundle.spec)
        return self.reduce(self.evidence(w)), len(w)

    def score_logmel(self, logmel: np.ndarray) -> float:
        """Score of one clip's (frames, mels) log-mel (at least one window long)."""
        return self.score_frames(logmel)[0]
