"""What the test suite (tests/) and the benchmarks (bench/) both build: a real Mosquitto
broker with its test credentials (``mosquitto``), a broker that speaks only MQTT 3.1.1
(``nats``), a TCP relay that drops, duplicates or freezes what a broker says (``relay``),
agent configs and multi-channel WAVs
(``files``), and the shared test data, corpora and bundles, built once and kept
(``data``).

Nothing here imports pytest at module level (bench/ runs without it), and no product code
(agent/, training/, export/) imports this package: tests/agent/test_import_rules.py
checks both. The heavy dependencies (training, export) are imported inside the builders
that need them, so a device-only install can import the broker and config helpers.
"""
