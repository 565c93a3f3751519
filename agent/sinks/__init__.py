"""Where results go: JSON lines (stdout, a file) and MQTT (agent/sinks/mqtt/sink.py). ``base.py``
declares the interface and how to add a sink."""

from __future__ import annotations

# importing a sink's module registers it: a new sink is one module and one name here
from harken.agent.sinks import jsonlines  # noqa: F401
from harken.agent.sinks.mqtt import sink as mqtt  # noqa: F401
from harken.agent.sinks.sparkplug import sink as sparkplug  # noqa: F401
from harken.agent.sinks import recent  # noqa: F401
from harken.agent.sinks import evidence  # noqa: F401
from harken.agent.sinks import metrics  # noqa: F401 (prometheus_client loads only when on)
from harken.agent.sinks.base import SINKS, Sink
from harken.agent.sinks.jsonlines import JsonLinesSink

__all__ = ["SINKS", "Sink", "JsonLinesSink", "make_sinks"]


def make_sinks(config) -> list[Sink]:
    """Every sink the config enables, in registration order (JSON lines first); if one
    fails to start, those already started are closed."""
    sinks: list[Sink] = []
    try:
        for cls in SINKS.values():
            if cls.enabled(config):
                sinks.append(cls.from_config(config))
    except BaseException:
        for s in sinks:
            s.close()
        raise
    return sinks
