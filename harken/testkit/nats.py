"""A broker that speaks only MQTT 3.1.1: Debian's nats-server (2.9) with its MQTT gateway,
on free loopback ports, for the tests of the agent's fall-back from MQTT 5 (docs/mqtt.md
"Protocol"). Its MQTT gateway needs JetStream (QoS 1 and retained messages live there)
and a ``server_name``. No credentials: the gateway is reached on loopback only.

nats-server answers a version-5 CONNECT with a 3.1.1 CONNACK "unacceptable protocol
version", as RabbitMQ 3.10's MQTT plugin does; scripts/setup installs it (tests profile).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from harken.testkit.mosquitto import free_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


class NatsBroker:
    """nats-server in ``root`` with an MQTT listener on ``self.port``."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        (root / "js").mkdir(parents=True, exist_ok=True)
        (root / "nats.conf").write_text(
            f'server_name: "harken_test"\nlisten: "127.0.0.1:{free_port()}"\n'
            f'jetstream {{ store_dir: "{root / "js"}" }}\n'
            f'mqtt {{ listen: "127.0.0.1:{self.port}" }}\n')

    def start(self) -> NatsBroker:
        if not Path(NATS_SERVER).exists():
            raise AssertionError("nats-server is not installed: scripts/setup --tests does it")
        self.proc = subprocess.Popen([NATS_SERVER, "-c", str(self.root / "nats.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if self.proc.poll() is not None:
                raise AssertionError(f"nats-server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nats-server did not open its MQTT port")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
