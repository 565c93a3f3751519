"""MQTT transport shared by the MQTT sinks: broker URLs and TLS (broker), the durable
outbox (outbox), the topic scheme (topics), Home Assistant discovery (homeassistant), the
one durable publisher that delivers for every network sink (publisher), and the JSON-topic
sink (sink), an encoder on it. The Sparkplug B sink (../sparkplug/) is the other."""
