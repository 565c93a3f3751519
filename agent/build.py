"""One machine's parts from its config: the bundle, the enrolled bank of a general bundle,
the scorer, the threshold and where it came from, the pipeline. ``harken run``, calibrate,
enroll and check-config all build a machine here, so they accept and refuse the same things."""

from __future__ import annotations

import logging
import math
from types import EllipsisType

import numpy as np

from harken.agent.config import Config, ConfigError
from harken.common.errors import DataError
from harken.common.atomic import set_aside as rename_aside
from harken.agent.decision import Decision, DecisionConfig
from harken.agent.decision.override import CalibrationOverride, read_override
from harken.agent.model.backends import BackendPool
from harken.agent.model.bank import (MAX_BANK_INTERVALS, BankError, BankManifest, read_bank,
                                     rule_arrays)
from harken.agent.model.bundle import MANIFEST, Bundle, open_bundle
from harken.agent.model.factory import make_scorer
from harken.agent.model.overlay import Overlay, OverlayError, overlay_file, read_overlay
from harken.agent.model.rules import RuleError, ScoreRule, make_rule
from harken.agent.model.rules.base import BankRule
from harken.agent.model.rules.density import DEFAULT_K
from harken.agent.pipeline import Pipeline
from harken.agent.sources import SOURCES

log = logging.getLogger(__name__)


def enrolled_bank(config: Config, bundle: Bundle
                  ) -> tuple[dict[str, np.ndarray], BankManifest] | None:
    """A general bundle's bank enrolled on this device (arrays, manifest); None for a
    bundle with its own bank. Refused clearly when missing, corrupt or another model's."""
    if not bundle.needs_enrollment:
        return None
    return read_bank(config.bank_file, bundle, config.agent.machine)


def feedback_file(config: Config):
    """The machine's feedback overlay file (agent/model/overlay.py)."""
    return overlay_file(config.path(config.agent.state_dir), config.agent.machine)


def base_threshold(config: Config, bundle: Bundle, enrollment: BankManifest | None = None,
                   override: bool = True) -> tuple[float, str, str]:
    """(value, kind, where it came from) of the threshold before feedback: the calibration
    override, else the enrolled bank's (its manifest: ``BundleScorer.enrollment``), else the
    bundle's. ``override=False`` skips the override: ``harken calibrate``, which replaces
    it, must not depend on it. ``kind`` is "override", "enrollment" or "bundle"."""
    calibrated = read_override(config) if override else None
    if calibrated is not None:
        _check_override_fits(calibrated, config, bundle)
        return calibrated.threshold, "override", f"calibration {config.override_file}"
    if enrollment is not None:
        if override:
            _check_interval(config, enrollment.interval_s, f"{config.bank_file}: the enrolled "
                            f"bank's threshold was fitted", "enroll again at this interval, ")
        return enrollment.threshold, "enrollment", f"enrollment {config.bank_file}"
    if bundle.threshold is None:
        raise ConfigError(f"{bundle.root}: the bundle has no threshold (an imported model); "
                          f"run 'harken calibrate' or set decision.threshold")
    fitted = bundle.manifest.threshold_interval_s
    if override and fitted is not None:
        _check_interval(config, fitted, f"{bundle.root / MANIFEST}: the bundle's threshold was "
                        f"fitted", "")
    return bundle.threshold, "bundle", "bundle"


def resolve_threshold(config: Config, bundle: Bundle, enrollment: BankManifest | None = None,
                      override: bool = True, feedback: Overlay | None | EllipsisType = ...,
                      warn: bool = True) -> tuple[float, str]:
    """Config value, else the threshold the last feedback recorded while its base is still
    the base, else the base (``base_threshold``). A base that changed since the feedback
    (calibrated again, enrolled again) wins, said in one warning line (``warn``): the kept
    threshold was the old base's (docs/agent.md "Feedback: how the bank and threshold
    change"). ``feedback``: the machine's overlay as read already (None: none), else it is
    read here."""
    if config.decision.threshold is not None:
        return config.decision.threshold, "config decision.threshold"
    value, kind, origin = base_threshold(config, bundle, enrollment, override)
    if feedback is ... and override:
        try:
            feedback = read_feedback(config, bundle)
        except OverlayError:              # set aside at start (``build``): not applied
            feedback = None
    last = feedback.last if isinstance(feedback, Overlay) else None
    if last is None or not override:
        return value, origin
    if last.base.kind == kind and last.base.value == value:
        return last.threshold_after, f"feedback {feedback_file(config)}"
    # feedback keeps the threshold, so its recorded one is its base's: nothing to set aside
    # unless an earlier release refitted it (docs/agent.md "Feedback")
    if warn and last.threshold_after != last.base.value:
        log.warning(f"WARNING: {feedback_file(config)}: "
                    f"the threshold the last feedback fitted ({last.threshold_after:.6g}, from "
                    f"the {last.base.kind} threshold {last.base.value:.6g}) is set aside: the "
                    f"threshold is now {origin}'s {value:.6g} (calibrated or enrolled since); "
                    f"the bank keeps the feedback's intervals")
    return value, origin


def _check_interval(config: Config, fitted_s: float, what: str, first: str) -> None:
    """A threshold holds for the length of audio it was fitted on: a score over 2 s of
    normal audio is not on the scale of one over 10 s (the quickstart bundle's normal
    audio scored 10-12 against its 10-s threshold of 1.1 at 2-s intervals, and alarmed
    within a minute). Refused rather than warned: a warning scrolls by in a daemon's log
    while the alarms (or the missed anomalies) go on (docs/agent.md "Calibration")."""
    if math.isclose(fitted_s, config.decision.interval_s, rel_tol=1e-6):
        return
    raise ConfigError(f"{what} on {fitted_s:g}-s intervals, but {config.source_file}: "
                      f"decision.interval_s = {config.decision.interval_s:g}: {first}run "
                      f"'harken calibrate' at this interval, set decision.interval_s = "
                      f"{fitted_s:g}, or set decision.threshold yourself")


def _check_override_fits(calibrated: CalibrationOverride, config: Config,
                         bundle: Bundle) -> None:
    """A threshold holds for the model and the report interval it was fitted at: an
    override of another model (the bundle was re-exported) or another interval length
    scores normal audio against the wrong number, so it is refused, saying what to do."""
    again = "run 'harken calibrate' again (or delete the file to use the bundle's threshold)"
    if calibrated.machine is not None and calibrated.machine != config.agent.machine:
        raise ConfigError(f"{config.override_file}: calibrated for machine "
                          f"{calibrated.machine!r}, but this is machine "
                          f"{config.agent.machine!r} (copied from another machine?); {again}")
    if calibrated.model != bundle.model_id:
        raise ConfigError(f"{config.override_file}: calibrated for model {calibrated.model!r}, "
                          f"but the bundle is {bundle.model_id!r}; {again}")
    if calibrated.scorer is not None and calibrated.scorer != bundle.scorer_digest(
            config.agent.section, config.model.artifact):
        kind = "members" if bundle.is_fused else bundle.artifact(config.model.artifact).kind
        raise ConfigError(f"{config.override_file}: calibrated with another model file or "
                          f"other rule arrays than the bundle's {kind} scores with now (the "
                          f"bundle was exported again, or model.artifact changed); {again}")
    if not math.isclose(calibrated.interval_s, config.decision.interval_s, rel_tol=1e-9):
        raise ConfigError(f"{config.override_file}: calibrated at {calibrated.interval_s:g}-s "
                          f"intervals, but decision.interval_s = "
                          f"{config.decision.interval_s:g}; {again}")


def feedback_density_k(bundle: Bundle) -> int:
    """The LDN neighbourhood feedback recomputes densities with: a general bundle's
    ``enrollment.density_k`` (its manifest), else the rule's default 4. A per-machine
    bundle's manifest does not record training's (training/spectral_knn.py
    ``SpectralKnnConfig.density_k``, default DEFAULT_K, capped per section at the clips
    less one); every bundle shipped was trained with the default."""
    e = bundle.manifest.enrollment
    return int(e.density_k) if e is not None else DEFAULT_K


def machine_rule(config: Config, bundle: Bundle) -> tuple[ScoreRule | None, BankManifest | None]:
    """The machine's score rule before feedback (the enrolled bank's, else the bundle's
    section's; None for a fused bundle, whose members score) and the enrolled bank's
    manifest (None for a bundle with its own bank)."""
    bank = enrolled_bank(config, bundle)          # read and checked once, here
    if bank is not None:
        try:
            return make_rule(bundle.rule_name, rule_arrays(bank[0], bundle)), bank[1]
        except RuleError as exc:          # a bank whose arrays do not make its rule
            raise BankError(f"{config.bank_file}: {exc}; enroll again") from None
    return (None if bundle.is_fused else
            bundle.rule(config.agent.section, config.model.artifact)), None


def read_feedback(config: Config, bundle: Bundle) -> Overlay | None:
    """The machine's feedback overlay (agent/model/overlay.py), checked; None if none."""
    return read_overlay(feedback_file(config),
                        bundle.model_id, config.agent.machine, config.agent.section)


def set_aside(config: Config, why: OverlayError, rename: bool = True) -> None:
    """An overlay that cannot apply (another model's: the bundle was upgraded; damaged;
    truncated) is set aside: renamed with a UTC stamp and said in one warning line. The
    feedback no longer applies and the machine is heard with its own bank; a node that
    does not start after a routine upgrade hears nothing (docs/agent.md "Feedback").
    ``rename=False`` (check-config) only says that a start will set it aside."""
    path = feedback_file(config)
    if not rename:
        log.warning(f"WARNING: {why} -- 'harken run' will set it aside and run without it")
        return
    try:
        aside = rename_aside(path, "set-aside")
    except OSError as exc:
        raise OverlayError(f"{why} (and it could not be set aside: {exc.strerror or exc})"
                           ) from None
    log.warning(f"WARNING: {path}: set aside as {aside.name}: the feedback it holds no longer "
                f"applies, the machine is heard with its own bank ({why})")


def with_feedback(config: Config, bundle: Bundle, rule: ScoreRule | None,
                  overlay: Overlay | None) -> ScoreRule | None:
    """``rule`` with the overlay's rows in its bank (the rule itself without an overlay);
    an overlay the rule cannot take (no bank, other statistics, too many rows) refused in
    one line naming the file."""
    if overlay is None:
        return rule
    path = feedback_file(config)
    if not isinstance(rule, BankRule):
        raise OverlayError(f"{path}: feedback was given, but this bundle's rule "
                           f"{bundle.rule_name!r} scores without a reference bank; move the "
                           f"file away")
    if rule.bank_rows + len(overlay) > MAX_BANK_INTERVALS:
        raise OverlayError(f"{path}: {len(overlay)} intervals of feedback and {rule.bank_rows} "
                           f"in the bank are more than a bank holds ({MAX_BANK_INTERVALS}); "
                           f"undo some feedback ('harken feedback --undo')")
    try:
        return rule.with_references(overlay.rows, feedback_density_k(bundle))
    except (DataError, RuleError) as exc:
        raise OverlayError(f"{path}: the feedback's intervals do not fit this bank ({exc}); "
                           f"move the file away") from None


def build(config: Config, seq_start: int = 1, bundle: Bundle | None = None,
          pool: BackendPool | None = None, override: bool = True,
          aside: bool = True) -> tuple[Bundle, Pipeline]:
    """One machine's bundle and pipeline (``config``: a single-machine config or view).
    ``bundle``: already opened (machines sharing one); ``pool``: backends to share;
    ``override``: False for the command that writes the calibration override. The
    feedback overlay, if any, joins the bank and may set the threshold (docs/agent.md
    "Feedback: how the bank and threshold change"); one that cannot apply is set aside
    (``set_aside``; ``aside=False``: only said, for check-config)."""
    bundle = bundle or open_bundle(config.path(config.model.bundle))
    # a general bundle has no sections of its own: its bank is this machine's
    if not bundle.needs_enrollment and config.agent.section not in bundle.sections:
        raise ConfigError(f"{config.source_file}: key 'agent.section' = {config.agent.section}: "
                          f"the bundle has sections {bundle.sections}")
    rule, enrollment = machine_rule(config, bundle)
    try:
        overlay = read_feedback(config, bundle)
        if overlay is not None:
            rule = with_feedback(config, bundle, rule, overlay)
    except OverlayError as exc:
        set_aside(config, exc, aside)
        overlay = None
    if overlay is None and enrollment is None:
        rule = None                       # the bundle's own, as the scorer takes it
    scorer = make_scorer(bundle, config.agent.section, config.model.artifact,
                         config.model.threads, rule=rule, enrollment=enrollment, pool=pool)
    threshold, _ = resolve_threshold(config, bundle, enrollment, override, overlay)
    d = config.decision
    decision = Decision(threshold, DecisionConfig(d.k_on, d.n, d.n_off))
    return bundle, Pipeline(scorer, decision, d.interval_s, seq_start=seq_start)


def preflight(config: Config, bundle: Bundle | None = None,
              pool: BackendPool | None = None, aside: bool = True) -> tuple[Bundle, Pipeline]:
    """Everything ``harken run`` refuses for one machine, checked before anything starts;
    ``harken check-config`` runs exactly this, so it approves only what ``run`` accepts:
    the bundle and its section, the threshold, what the source checks (the audio file),
    the MQTT password source."""
    bundle, pipeline = build(config, bundle=bundle, pool=pool, aside=aside)
    SOURCES[config.audio.source].preflight(config)      # e.g. the file source: the file
    if config.mqtt.enabled:
        config.mqtt.resolved_password()          # an unset password_env is refused here
    return bundle, pipeline
