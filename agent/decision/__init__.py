"""The decision stage: whether the audio can be scored (health), k-of-n hysteresis over
interval scores (hysteresis), thresholds from score distributions (thresholds), and the
records an interval produces for the sinks (records)."""

from harken.agent.decision.hysteresis import Decision, DecisionConfig, Event

__all__ = ["Decision", "DecisionConfig", "Event"]
