"""What the loopback test stand-ins share: a server thread, a quiet handler, ask the peer, relay.

The stand-ins (tests/support/fault_proxy.py, s3_standin.py, azure_immutability_standin.py,
ssm_reads_standin.py, arm_standin.py) alter requests, refuse some or answer some themselves;
whatever a proxy lets through goes to the peer and comes back through ``ask_upstream`` and
``relay``.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import SplitResult

from tests.support.tls import TlsFiles

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class LoopbackServer:
    """A threading HTTP server on a free loopback port, served from a daemon thread; HTTPS when
    given a certificate."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], *, tls: TlsFiles | None = None) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.scheme = "http" if tls is None else "https"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls.cert), str(tls.key))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class StandInHandler(BaseHTTPRequestHandler):
    """Keep-alive, no access log, and the few ways a stand-in reads a request and answers."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def forward_headers(self) -> dict[str, str]:
        """The request's headers less the hop-by-hop ones, as a proxy passes them on."""
        return {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}

    def answer(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        """A whole answer of the stand-in's own (a HEAD gets the headers only)."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def ask_upstream(
    upstream: SplitResult, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request to the peer; its status, headers and whole body."""
    host = upstream.hostname or "127.0.0.1"  # (an upstream URL always names one)
    connection = http.client.HTTPConnection(host, upstream.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def relay(
    handler: BaseHTTPRequestHandler,
    status: int,
    headers: list[tuple[str, str]],
    data: bytes,
    extra: dict[str, str] | None = None,
) -> None:
    """Answer with the peer's response (plus ``extra`` headers); a HEAD keeps the object's
    Content-Length and sends no body."""
    handler.send_response(status)
    head = handler.command == "HEAD"
    for name, value in headers:
        if name.lower() not in HOP_HEADERS and (head or name.lower() != "content-length"):
            handler.send_header(name, value)
    for name, value in (extra or {}).items():
        handler.send_header(name, value)
    if not head:
        handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    if not head:
        handler.wfile.write(data)
