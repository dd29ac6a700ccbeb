"""The HTTP plumbing the API doubles share (tests/k8s_double.py, tests/oci_double.py,
tests/loki_double.py): a
threaded server on a free 127.0.0.1 port, run from a background thread, that knows its open
connections so that stop() need not wait for idle keep-alive ones."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: LoopbackServer, handler: type[BaseHTTPRequestHandler]) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up (or a TLS probe) is not worth a traceback; anything else is.
        if not isinstance(sys.exc_info()[1], (OSError, ssl.SSLError)):
            super().handle_error(request, client_address)


class TrackedHandler(BaseHTTPRequestHandler):
    """Registers its connection with the server's owner while it is open."""

    protocol_version = "HTTP/1.1"  # keep-alive, as client-go, urllib3 and requests expect
    server: QuietServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm holds the
        # body until the client's delayed ACK (~40 ms per request).
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.owner.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner.track(self.connection, False)

    def read_request(self) -> tuple[dict[str, str], bytes]:
        """The request's headers (lower-cased names) and body."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        return {k.lower(): v for k, v in self.headers.items()}, body

    def send_reply(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        """Status, headers (Content-Length added) and body; a client gone away closes it."""
        try:
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(payload))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True  # the client went away (or the double stopped)

    def log_message(self, format: str, *args: Any) -> None:
        return  # tests read `requests`, not a log


@dataclass
class Reply:
    """A double's answer: a dict or list is sent as JSON, a str as plain text, None as an
    empty body. `JSON_TYPE` is the Content-Type the imitated server writes for JSON."""

    JSON_TYPE: ClassVar[str] = "application/json"

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> tuple[bytes, str]:
        if self.body is None:
            return b"", ""
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return json.dumps(self.body).encode(), self.JSON_TYPE


class LoopbackServer:
    """Start, stop and `with` for a double; subclasses give the handler class."""

    def __init__(self) -> None:
        self.url = ""
        self._server: QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def handler_class(self) -> type[TrackedHandler]:
        raise NotImplementedError

    def start(self) -> Self:
        self._server = QuietServer(self, self.handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:  # idle keep-alive connections would hold their threads
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def track(self, connection: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            if alive:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
