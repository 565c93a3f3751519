"""One machine's parts from its config: the bundle, the enrolled bank of a general bundle,
the scorer, the threshold and where it came from, the pipeline. ``harken run``, calibrate,
enroll and check-config all build a machine here, so they accept and refuse the same things."""

from __future__ import annotations

import numpy as np

from harken.agent.config import Config, ConfigError
from harken.agent.decision import Decision, DecisionConfig
from harken.agent.decision.override import read_override
from harken.agent.model.backends import BackendPool
from harken.agent.model.bank import BankManifest, read_bank, rule_arrays
from harken.agent.model.bundle import Bundle, open_bundle
from harken.agent.model.factory import make_scorer
from harken.agent.model.rules import make_rule
from harken.agent.pipeline import Pipeline
from harken.agent.sources import SOURCES


def enrolled_bank(config: Config, bundle: Bundle
                  ) -> tuple[dict[str, np.ndarray], BankManifest] | None:
    """A general bundle's bank enrolled on this device (arrays, manifest); None for a
    bundle with its own bank. Refused clearly when missing, corrupt or another model's."""
    if not bundle.needs_enrollment:
        return None
    return read_bank(config.bank_file, bundle)


def resolve_threshold(config: Config, bundle: Bundle,
                      enrollment: BankManifest | None = None) -> tuple[float, str]:
    """Config value, else the calibration override, else the enrolled bank's (its
    manifest: ``BundleScorer.enrollment``), else the bundle's."""
    if config.decision.threshold is not None:
        return config.decision.threshold, "config decision.threshold"
    override = read_override(config)
    if override is not None:
        return override.threshold, f"calibration {config.override_file}"
    if enrollment is not None:
        return enrollment.threshold, f"enrollment {config.bank_file}"
    if bundle.threshold is None:
        raise ConfigError(f"{bundle.root}: the bundle has no threshold (an imported model); "
                          f"run 'harken calibrate' or set decision.threshold")
    return bundle.threshold, "bundle"


def build(config: Config, seq_start: int = 1, bundle: Bundle | None = None,
          pool: BackendPool | None = None) -> tuple[Bundle, Pipeline]:
    """One machine's bundle and pipeline (``config``: a single-machine config or view).
    ``bundle``: already opened (machines sharing one); ``pool``: backends to share."""
    bundle = bundle or open_bundle(config.path(config.model.bundle))
    # a general bundle has no sections of its own: its bank is this machine's
    if not bundle.needs_enrollment and config.agent.section not in bundle.sections:
        raise ConfigError(f"{config.source_file}: key 'agent.section' = {config.agent.section}: "
                          f"the bundle has sections {bundle.sections}")
    bank = enrolled_bank(config, bundle)          # read and checked once, here
    rule = enrollment = None
    if bank is not None:
        rule, enrollment = make_rule(bundle.rule_name, rule_arrays(bank[0], bundle)), bank[1]
    scorer = make_scorer(bundle, config.agent.section, config.model.artifact,
                         config.model.threads, rule=rule, enrollment=enrollment, pool=pool)
    threshold, _ = resolve_threshold(config, bundle, enrollment)
    d = config.decision
    decision = Decision(threshold, DecisionConfig(d.k_on, d.n, d.n_off))
    return bundle, Pipeline(scorer, decision, d.interval_s, seq_start=seq_start)


def preflight(config: Config, bundle: Bundle | None = None,
              pool: BackendPool | None = None) -> tuple[Bundle, Pipeline]:
    """Everything ``harken run`` refuses for one machine, checked before anything starts;
    ``harken check-config`` runs exactly this, so it approves only what ``run`` accepts:
    the bundle and its section, the threshold, what the source checks (the audio file),
    the MQTT password source."""
    bundle, pipeline = build(config, bundle=bundle, pool=pool)
    SOURCES[config.audio.source].preflight(config)      # e.g. the file source: the file
    if config.mqtt.enabled:
        config.mqtt.resolved_password()          # an unset password_env is refused here
    return bundle, pipeline
