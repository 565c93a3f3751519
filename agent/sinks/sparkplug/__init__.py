"""Sparkplug B (Eclipse Sparkplug 3.0): the agent as an edge node that SCADA hosts (Ignition
MQTT Engine, HiveMQ, Canary) discover by themselves, beside the JSON topics (docs/mqtt.md).

``payload.py`` the protobuf schema and metric encoding; ``node.py`` the edge node (births,
deaths, sequence numbers, rebirth, DDATA payloads: an encoder on the durable publisher of
agent/sinks/mqtt/publisher.py, which stores, forwards and reconnects); ``sink.py`` each
monitored machine as a device of it.
"""
