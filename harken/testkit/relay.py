"""A TCP relay between an MQTT client and a broker that misbehaves on request, for the
delivery tests (docs/reliability.md "Delivery over MQTT"):

- ``hold()`` / ``release()``: the broker's replies (CONNACK, PUBACK) wait in the relay;
- ``drop_pubacks``: the broker's PUBACKs are thrown away, everything else passes (a network
  or a load balancer that loses them: the window stays full);
- ``duplicate_pubacks``: every PUBACK reaches the client twice;
- ``freeze()``: the lines open now stop forwarding in both directions and are never
  closed (a half-open connection: no FIN, no RST); lines opened later flow;
- ``close_after_connack``: each line is cut right after the broker's CONNACK, after an
  MQTT 5 DISCONNECT with the reason code ``disconnect_reason`` when that is set (0x8E:
  "Session taken over", as a broker says it to a client whose id another one took);
- ``cut()``: every open line is closed;
- ``connack_delay_s``: each line's CONNACK reaches the client that long after the line was
  opened (a loaded broker or cluster that answers late).

The relay reads the broker's side packet by packet (fixed header, remaining length), so
it can act on one packet type; the client's side is copied as it comes.
"""

from __future__ import annotations

import socket
import threading
import time

CONNACK, PUBACK = 2, 4             # MQTT control packet types (the high nibble)


def _packets(buffer: bytearray) -> list[bytes]:
    """The complete MQTT packets at the front of ``buffer`` (removed from it)."""
    out = []
    while len(buffer) >= 2:
        length, shift, i = 0, 0, 1
        while True:
            if i >= len(buffer):
                return out                # the remaining length is not all here yet
            byte = buffer[i]
            length |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
        if len(buffer) < i + length:
            return out
        out.append(bytes(buffer[:i + length]))
        del buffer[:i + length]
    return out


class _Line:
    """One client connection and its upstream connection to the broker."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.began = time.monotonic()
        self.open = threading.Event()       # cleared: frozen
        self.open.set()

    def close(self) -> None:
        self.open.set()                     # a frozen pump wakes and finds its socket gone
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)      # wakes a pump blocked in recv
            except OSError:
                pass
            s.close()


class Relay:
    """A relay on a free loopback port to the broker at ``port`` (module docstring)."""

    def __init__(self, port: int) -> None:
        self.broker_port = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.drop_pubacks = False
        self.duplicate_pubacks = False
        self.close_after_connack = False
        self.connack_delay_s = 0.0
        self._closing = threading.Event()
        self.disconnect_reason: int | None = None
        self.pubacks_dropped = 0
        self.connections = 0                # lines accepted so far
        self.lines: list[_Line] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.broker_port))
            except OSError:
                client.close()
                continue
            line = _Line(client, upstream)
            with self._lock:
                self.lines.append(line)
                self.connections += 1
            threading.Thread(target=self._up, args=(line,), daemon=True).start()
            threading.Thread(target=self._down, args=(line,), daemon=True).start()

    @staticmethod
    def _up(line: _Line) -> None:
        """Client to broker, as it comes."""
        try:
            while data := line.client.recv(65536):
                line.open.wait()
                line.upstream.sendall(data)
        except OSError:
            pass

    def _down(self, line: _Line) -> None:
        """Broker to client, packet by packet."""
        buffer = bytearray()
        try:
            while data := line.upstream.recv(65536):
                buffer += data
                for packet in _packets(buffer):
                    self.flowing.wait()
                    line.open.wait()
                    kind = packet[0] >> 4
                    if kind == PUBACK and self.drop_pubacks:
                        self.pubacks_dropped += 1
                        continue
                    if kind == CONNACK and self.connack_delay_s:
                        # the broker's slowness, not a test's wait: a close ends it at once
                        self._closing.wait(max(0.0, line.began + self.connack_delay_s
                                               - time.monotonic()))
                    line.client.sendall(packet)
                    if kind == PUBACK and self.duplicate_pubacks:
                        line.client.sendall(packet)
                    if kind == CONNACK and self.close_after_connack:
                        if self.disconnect_reason is not None:
                            line.client.sendall(bytes([0xE0, 2, self.disconnect_reason, 0]))
                        line.close()
                        return
        except OSError:
            pass

    def hold(self) -> None:
        self.flowing.clear()

    def release(self) -> None:
        self.flowing.set()

    def freeze(self) -> None:
        """The lines open now stop forwarding, both ways, and stay open (half-open)."""
        with self._lock:
            for line in self.lines:
                line.open.clear()

    def cut(self) -> None:
        with self._lock:
            lines, self.lines = self.lines, []
        for line in lines:
            line.close()

    def close(self) -> None:
        self._closing.set()
        self.cut()
        self.server.close()
