"""TLS to a real Mosquitto listener that requires client certificates from a test CA:
the agent publishes with the right CA and its client certificate; with another CA it is
refused with a message naming the cause and the config key."""

from harken.testkit.mosquitto import (PASSWORD, USER, Listener, agent_config, run_agent,
                                      start_agent)


def _result(seq: int):
    from harken.agent.decision.records import IntervalResult
    return IntervalResult(ts=1.0, seq=seq, score=1.5, threshold=2.0, anomaly=False,
                          interval_s=2.0, model="m", backend="onnx", status="ok",
                          rms_dbfs=-20.0, windows=3, inference_ms=0.1)


def test_a_stop_during_the_tls_handshake_waits_for_it_and_delivers(tls_broker, tmp_path):
    """A one-shot run that ends while the first TLS connection is still being made (the
    handshake takes far longer than putting one score into the outbox) delivers its score
    at the clean stop instead of leaving it in the outbox."""
    from harken.agent.config import MqttSection
    from harken.agent.sinks.mqtt.sink import MqttSink
    listen = Listener(tls_broker.port)
    root = tls_broker.root
    settings = MqttSection(enabled=True, host="127.0.0.1", port=tls_broker.tls_port,
                           username=USER, password=PASSWORD, tls=True,
                           ca_file=str(root / "ca.crt"), cert_file=str(root / "client.crt"),
                           key_file=str(root / "client.key"))
    sink = MqttSink(settings, "n1", "fan", tmp_path / "outbox.db", log=lambda m: None)
    sink.interval(_result(1))              # straight after the start: not connected yet
    sink.close(flush_s=20)
    listen.wait(lambda lt: [s["seq"] for s in lt.scores()] == [1])
    listen.wait(lambda lt: ("harken/n1/fan/status", "stopped") in [(t, p) for t, p, _ in lt.messages])
    listen.close()


def test_a_stop_with_the_broker_refusing_does_not_wait_the_flush_time(tls_broker, tmp_path):
    """The wait is for a connection in progress, not for a broker that already said no."""
    import time

    from harken.agent.config import MqttSection
    from harken.agent.sinks.mqtt.sink import MqttSink
    root = tls_broker.root
    settings = MqttSection(enabled=True, host="127.0.0.1", port=tls_broker.tls_port,
                           username=USER, password=PASSWORD, tls=True,
                           ca_file=str(root / "other-ca.crt"),
                           cert_file=str(root / "client.crt"), key_file=str(root / "client.key"))
    seen = []
    sink = MqttSink(settings, "n1", "fan", tmp_path / "outbox.db", log=seen.append)
    sink.interval(_result(1))
    deadline = time.monotonic() + 60
    while not any("was not accepted" in m for m in seen) and time.monotonic() < deadline:
        time.sleep(0.05)                  # polls an event (the refusal), not a fixed wait
    t0 = time.monotonic()
    sink.close(flush_s=600)
    assert time.monotonic() - t0 < 300, "close() waited for a broker that had refused"
    assert any("was not accepted" in m for m in seen)


def test_scores_over_tls_with_a_client_certificate(tls_broker, ae_bundle, wav, tmp_path):
    listen = Listener(tls_broker.port)               # the plant side on the plain listener
    cfg = agent_config(tmp_path, ae_bundle, tls_broker.tls_port, wav, tls=True,
                       ca_file="ca.crt", cert_file="client.crt", key_file="client.key")
    out = run_agent(cfg)
    assert out.returncode == 0, out.stderr
    listen.wait(lambda lt: [s["seq"] for s in lt.scores()] == [1, 2, 3, 4, 5])
    assert f"connected to 127.0.0.1:{tls_broker.tls_port}" in out.stderr
    listen.close()


def test_a_broker_certificate_from_another_ca_is_refused_clearly(tls_broker, ae_bundle, wav,
                                                                  tmp_path):
    listen = Listener(tls_broker.port)
    cfg = agent_config(tmp_path, ae_bundle, tls_broker.tls_port, wav, realtime=True,
                       tls=True, ca_file="other-ca.crt", cert_file="client.crt",
                       key_file="client.key")
    proc = start_agent(cfg)
    import threading
    guard = threading.Timer(120, proc.terminate)      # never hang if the line never comes
    guard.start()
    err_head = ""
    for line in proc.stderr:                          # the refusal is logged, then stop
        err_head += line
        if "was not accepted" in line:
            break
    guard.cancel()
    proc.terminate()
    err = err_head + proc.communicate(timeout=30)[1]
    assert proc.returncode == 0, err                 # scoring went on; the outbox holds it
    # the verify reason (e.g. "self-signed certificate in certificate chain") is OpenSSL's
    assert (f"TLS: the certificate of broker 127.0.0.1:{tls_broker.tls_port} was not "
            "accepted: ") in err and "certificate" in err.split("was not accepted: ")[1]
    assert "(check mqtt.ca_file" in err
    assert err.count("was not accepted") == 1        # once, not at every retry
    assert listen.scores() == []
    listen.close()


def test_tls_insecure_is_warned_about_and_a_missing_ca_file_is_a_config_error(
        tls_broker, ae_bundle, wav, tmp_path):
    cfg = agent_config(tmp_path, ae_bundle, tls_broker.tls_port, wav, tls=True,
                       ca_file="other-ca.crt", tls_insecure=True, cert_file="client.crt",
                       key_file="client.key")
    out = run_agent(cfg)
    assert out.returncode == 0, out.stderr
    assert "WARNING: TLS certificate verification is OFF (mqtt.tls_insecure)" in out.stderr
    assert "connected to" in out.stderr                # unverified, but it connects

    bad = agent_config(tmp_path, ae_bundle, tls_broker.tls_port, wav, tls=True,
                       ca_file="missing.crt", name="bad.toml")
    out = run_agent(bad)
    assert out.returncode == 2
    assert "mqtt.ca_file" in out.stderr and "missing.crt" in out.stderr
    assert "cannot load CA certificates" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_refused_password_is_logged_once_not_at_every_retry(tmp_path):
    """paho reports each refused CONNACK and then a disconnect; retried for hours, that
    was two alternating lines per retry. Driven through the callbacks paho calls."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from harken.agent.config import MqttSection
    from harken.agent.sinks.mqtt.sink import MqttSink
    seen = []
    settings = MqttSection(enabled=True, host="127.0.0.1", port=1, username="u", password="x")
    sink = MqttSink(settings, "n1", "fan", tmp_path / "outbox.db", log=seen.append)
    try:
        no = ReasonCode(PacketTypes.CONNACK, "Not authorized")
        bye = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
        publisher = sink.publisher            # the connection is the publisher's
        for _ in range(5):
            publisher._on_connect(publisher.client, None, None, no, None)
            publisher._on_disconnect(publisher.client, None, None, bye, None)
        # (the sink's own attempt at port 1 may add "cannot reach": not what is counted)
        refusals = [m for m in seen if "Not authorized" in m or "disconnected" in m]
        assert len(refusals) == 1 and "Not authorized" in refusals[0]
    finally:
        sink.close(flush_s=0)
