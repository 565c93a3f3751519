"""The web page's server: three static files, the live feed as server-sent events, and the
fleet as JSON, read-only.

Python's own ``http.server`` (a thread per connection) rather than aiohttp or Starlette:
the page is one-way (the watcher tells, the browser listens), which server-sent events do
over plain HTTP, a plant has a handful of people looking at once, and the standard library
adds nothing to install on either side. Bounded whatever connects: at most
``MAX_CONNECTIONS`` connections at once (more are closed at once), at most ``MAX_PAGES`` of
them live pages, each with a queue of ``QUEUE`` messages; a page that does not read (a
phone gone to sleep) fills its queue, is dropped, and its browser reconnects and starts
again from a snapshot. A request whose head has not arrived whole within
``REQUEST_TIMEOUT_S`` is closed (one deadline for the head, not one per read: a client
sending a header line every few seconds is closed too). The stream is gzip-compressed where
the browser accepts it (every browser does), flushed after each event, and written in
pieces that each have ``REQUEST_TIMEOUT_S`` to go, so a big fleet's first message reaches a
slow phone.

Headers: a strict Content-Security-Policy (scripts, styles and connections from this
origin only, no inline script, no framing), ``nosniff``, no referrer, on every answer, the
server's own error pages too. Bound to a loopback address, it answers only requests whose
``Host`` is a loopback name, so that a web page elsewhere cannot read the fleet through DNS
rebinding; behind a reverse proxy (docs/watch.md "Behind the plant's reverse proxy") it
binds where it is told.
"""

from __future__ import annotations

import ipaddress
import json
import queue
import re
import socket
import threading
import time
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from harken.agent.plant.web.feed import Feed

MAX_CONNECTIONS = 64
MAX_PAGES = 32
MAX_HEADS_PER_ADDRESS = 8       # requests of one address still arriving at once (slowloris)
QUEUE = 30                      # messages a page may be behind (a delta a second)
REQUEST_TIMEOUT_S = 10.0
KEEPALIVE_S = 15.0              # a comment line this often keeps proxies from closing the stream
PIECE = 64 * 1024               # bytes written at a time, each with its own timeout
FLEET_JSON_S = 1.0              # /fleet.json is made at most once a second, whoever asks
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8")}
LOOPBACK_NAMES = ("localhost", "localhost.", "ip6-localhost")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?")
KEEPALIVE = b": keepalive\n\n"


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` takes gzip (``gzip;q=0`` refuses it, RFC 9110)."""
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            try:
                return not q.startswith("q=") or float(q[2:]) > 0
            except ValueError:
                return False
    return False


def _static(name: str) -> bytes:
    return resources.files("harken.agent.plant.web").joinpath("static", name).read_bytes()


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str | None:
    """The host of a ``Host`` header without its port (``[::1]:8080`` -> ``::1``), or None
    when the header is no host and port (``localhost:80@evil.com``)."""
    found = _HOST.fullmatch(header.strip())
    return None if found is None else found.group(1).strip("[]")


class WebServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 32

    def __init__(self, address: tuple[str, int], feed: Feed) -> None:
        self.feed = feed
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.pages = threading.BoundedSemaphore(MAX_PAGES)
        self.static = {path: (_static(name), kind) for path, (name, kind) in STATIC.items()}
        self.closing = threading.Event()
        self._fleet_json: tuple[float, bytes, bytes] = (-1.0, b"", b"")
        self._fleet_json_lock = threading.Lock()
        self._first_gz: tuple[bytes, bytes, object] | None = None   # (snapshot, its gzip, packer)
        self._first_gz_lock = threading.Lock()
        self.heads: dict[str, int] = {}              # address: requests whose head is arriving
        self.heads_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        # from the address bound, not the text given: "127.1", "0x7f000001" and a host name
        # that resolves to 127.0.0.1 are loopback too
        self.loopback_only = _is_loopback(str(self.server_address[0]))

    def process_request(self, request, client_address) -> None:
        # a connection over the bound is closed at once: threads stay bounded
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:
        pass    # a browser that went away mid-answer is no error worth a traceback

    def url(self) -> str:
        """Where to open the page: on every address (0.0.0.0, ::), by this computer's name."""
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def fleet_json(self, gzip: bool) -> bytes:
        """The fleet as JSON (gzip-compressed with ``gzip``), made at most once every
        FLEET_JSON_S: a client polling it in a loop must not hold the fleet's lock away from
        the messages."""
        with self._fleet_json_lock:
            made, data, packed = self._fleet_json
            if time.monotonic() - made >= FLEET_JSON_S:
                with self.feed.lock:
                    msg = self.feed.snapshot()
                data = json.dumps(msg, allow_nan=False).encode()
                packed = b""
                self._fleet_json = (time.monotonic(), data, packed)
            if gzip and not packed:
                packed = zlib.compress(data, 6, 31)
                self._fleet_json = (self._fleet_json[0], data, packed)
            return packed if gzip else data

    def first_gzip(self, first: bytes) -> tuple[bytes, object]:
        """The snapshot as the start of a gzip stream, and the compressor to go on with:
        made once for the pages that share one snapshot (compressing 10 MB for each of
        them would hold the interpreter for seconds)."""
        with self._first_gz_lock:
            cached = self._first_gz
            if cached is None or cached[0] is not first:
                packer = zlib.compressobj(6, zlib.DEFLATED, 31)
                head = packer.compress(b"retry: 3000\n\n" + first) + packer.flush(zlib.Z_SYNC_FLUSH)
                cached = self._first_gz = (first, head, packer)
            return cached[1], cached[2].copy()


class Handler(BaseHTTPRequestHandler):
    server: WebServer
    timeout = REQUEST_TIMEOUT_S
    server_version = "harken-watch"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # a request line that is no HTTP at all is answered with a status line and headers
    # (the policy among them), not as HTTP/0.9's bare body
    default_request_version = "HTTP/1.0"

    def log_message(self, format, *args) -> None:   # noqa: A002 - the base class's name
        pass    # no line per request on the watcher's terminal

    def handle_one_request(self) -> None:
        # one deadline for each request's head (a keep-alive connection's next one too): a
        # per-read timeout lets a client that sends a header line every few seconds hold
        # the connection for ever
        address = str(self.client_address[0])
        with self.server.heads_lock:
            arriving = self.server.heads.get(address, 0)
            if arriving >= MAX_HEADS_PER_ADDRESS:
                # one address with this many heads still arriving is a slowloris: a client
                # that reconnects each time it is closed would otherwise hold every slot
                self.close_connection = True
                return
            self.server.heads[address] = arriving + 1
        self._arriving = address
        self._deadline = threading.Timer(REQUEST_TIMEOUT_S, self._expire)
        self._deadline.daemon = True
        self._deadline.start()
        try:
            super().handle_one_request()
        finally:
            self._deadline.cancel()
            self._head_arrived()

    def _head_arrived(self) -> None:
        address, self._arriving = getattr(self, "_arriving", None), None
        if address is not None:
            with self.server.heads_lock:
                left = self.server.heads.get(address, 1) - 1
                if left > 0:
                    self.server.heads[address] = left
                else:
                    self.server.heads.pop(address, None)

    def _expire(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def parse_request(self) -> bool:
        ok = super().parse_request()           # the request line and the headers read
        self._deadline.cancel()
        self._head_arrived()
        return ok

    def end_headers(self) -> None:
        # on every answer, http.server's own error pages (400, 414, 431, 501) too
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        super().end_headers()

    def _head(self, status: int, kind: str, length: int | None, cache: str = "no-store",
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", cache)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _answer(self, status: int, body: bytes, kind: str = "text/plain; charset=utf-8") -> None:
        self._head(status, kind, len(body))
        if self.command != "HEAD":
            self._write(body)

    def _write(self, data: bytes) -> None:
        """In pieces, each with the socket's timeout: a slow reader is not cut off in the
        middle of a big message, only when it stops reading."""
        view = memoryview(data)
        for at in range(0, len(view), PIECE):
            self.wfile.write(view[at:at + PIECE])
        self.wfile.flush()

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        host = host_name(self.headers.get("Host", ""))
        if self.server.loopback_only and (host is None or not _is_loopback(host)):
            self.close_connection = True
            self._answer(HTTPStatus.MISDIRECTED_REQUEST, b"this watcher answers only on its "
                         b"loopback address (start it with --web HOST:PORT to serve others)\n")
            return
        path = self.path.split("?", 1)[0]
        if path in self.server.static:
            body, kind = self.server.static[path]
            self._answer(HTTPStatus.OK, body, kind)
        elif path == "/fleet.json":
            gzip = accepts_gzip(self.headers.get("Accept-Encoding", ""))
            body = self.server.fleet_json(gzip)
            self._head(HTTPStatus.OK, "application/json", len(body),
                       extra={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"} if gzip
                       else {"Vary": "Accept-Encoding"})
            if self.command != "HEAD":
                self._write(body)
        elif path == "/favicon.ico":        # asked for by every browser; the page has none
            self._head(HTTPStatus.NO_CONTENT, "image/x-icon", None, cache="max-age=86400")
        elif path == "/events" and self.command == "HEAD":
            self.close_connection = True
            self._head(HTTPStatus.OK, "text/event-stream", None)
        elif path == "/events":
            self._events()
        else:
            self.close_connection = True
            self._answer(HTTPStatus.NOT_FOUND, b"not found\n")

    def do_POST(self) -> None:
        self.close_connection = True
        self._answer(HTTPStatus.METHOD_NOT_ALLOWED, b"this page is read-only\n")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST

    def _events(self) -> None:
        if not self.server.pages.acquire(blocking=False):
            self.close_connection = True
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE, b"too many pages open\n")
            return
        waiting: queue.Queue[bytes] = queue.Queue(QUEUE)

        def send(data: bytes) -> bool:
            try:
                waiting.put_nowait(data)
                return True
            except queue.Full:          # this page does not read: drop it, it reconnects
                return False

        gzip = accepts_gzip(self.headers.get("Accept-Encoding", ""))
        packer = None

        def out(data: bytes) -> None:
            if packer is not None:      # each event flushed whole: the page sees it at once
                data = packer.compress(data) + packer.flush(zlib.Z_SYNC_FLUSH)
            self._write(data)

        feed = self.server.feed
        try:
            first = feed.subscribe(send)
            self.close_connection = True
            self._head(HTTPStatus.OK, "text/event-stream", None,
                       extra={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
                       if gzip else None)
            # a browser reconnects after 3 s by default; say so, and give the snapshot
            if gzip:
                head, packer = self.server.first_gzip(first)
                self._write(head)
            else:
                out(b"retry: 3000\n\n" + first)
            while not self.server.closing.is_set():
                try:
                    data = waiting.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    data = KEEPALIVE
                out(data)
                if send not in feed.pages and waiting.empty():
                    break               # dropped for being slow: end, the browser comes back
        except OSError:
            pass                        # the page went away
        finally:
            feed.unsubscribe(send)
            self.server.pages.release()


def start(host: str, port: int, feed: Feed) -> WebServer:
    """Listen and serve on a daemon thread; OSError when the address cannot be bound."""
    server = WebServer((host, port), feed)
    threading.Thread(target=server.serve_forever, name="harken-watch-web", daemon=True).start()
    return server


def stop(server: WebServer) -> None:
    server.closing.set()
    server.shutdown()
    server.server_close()
