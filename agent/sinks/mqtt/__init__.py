"""MQTT transport shared by the MQTT sinks: broker URLs and TLS (broker), the durable
outbox (outbox), the topic scheme (topics), Home Assistant discovery (homeassistant), and
the JSON-topic sink (sink). The Sparkplug B sink (../sparkplug/) uses the same transport."""
