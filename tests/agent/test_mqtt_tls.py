"""TLS to a real Mosquitto listener that requires client certificates from a test CA:
the agent publishes with the right CA and its client certificate; with another CA it is
refused with a message naming the cause and the config key."""

import time

from tests.agent.mosquitto import Listener, agent_config, run_agent, start_agent


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
    time.sleep(6)
    proc.terminate()
    err = proc.communicate(timeout=30)[1]
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
