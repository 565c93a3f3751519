import shutil

import pytest

from harken.agent.sources.wavio import read_wav, write_wav
from harken.testkit.data import built_once
from harken.testkit.mosquitto import STARTED, Broker, make_tls_files


@pytest.fixture(autouse=True)
def no_agent_outlives_its_test():
    """A test that fails before stopping its agent must not leave it running (it would go on
    publishing into later tests' brokers and using CPU)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _broker(root, tls=False, certs=None):
    assert shutil.which("mosquitto_passwd"), "mosquitto is not installed: scripts/setup does it"
    b = Broker(root, tls=tls, certs=certs)
    b.start()
    return b


@pytest.fixture
def broker(tmp_path):
    b = _broker(tmp_path)
    yield b
    b.stop()


@pytest.fixture(scope="session")
def tls_files(shared):
    """The test CAs and certificates, made once for the run and copied into each TLS broker's
    folder (the tests may change their copies)."""
    assert shutil.which("openssl"), "openssl is not installed: scripts/setup does it"
    return built_once(shared / "tls", make_tls_files)


@pytest.fixture
def tls_broker(tmp_path, tls_files):
    b = _broker(tmp_path, tls=True, certs=tls_files)
    yield b
    b.stop()


@pytest.fixture
def wav(small_fan, tmp_path):
    """10 s of a test clip: four full 2-s intervals and the last one at the end."""
    from harken.training.data.corpus import scan
    clip = scan(small_fan, ["fan"], "test")[0]
    x, rate = read_wav(clip.path, 16000)
    write_wav(tmp_path / "ten.wav", x, rate)
    return tmp_path / "ten.wav"


@pytest.fixture
def spb_broker(tmp_path):
    """A Mosquitto for the Sparkplug tests: QoS 0 messages queued for a host that is away
    (Sparkplug's NDEATH and DDATA arrive for it as for a SCADA host)."""
    b = Broker(tmp_path, extra="queue_qos0_messages true\n")
    b.start()
    yield b
    b.stop()
