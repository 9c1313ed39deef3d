"""A tiny loopback reverse proxy that injects failures (a test fake, clearly named).

Put it between a client and a real peer (moto server) to answer the next N requests with an
error such as 503 or a 429 throttling response, then forward normally. Clients are tested
unchanged: their retry logic sees real HTTP responses.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass
class Fault:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self._faults: list[Fault] = []
        self._by_method: dict[str, Fault] = {}  # every request of the method fails, until ``clear``
        self._lock = threading.Lock()
        self.requests = 0
        self.injected = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(
        self, count: int, status: int = 503, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        with self._lock:
            self._faults.extend(Fault(status, body, dict(headers or {})) for _ in range(count))

    def fail_method(
        self, method: str, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        """Answer every ``method`` request (e.g. each PUT: a store refusing writes) with ``status``."""
        with self._lock:
            self._by_method[method.upper()] = Fault(status, body, dict(headers or {}))

    def clear(self) -> None:
        """Forget the faults not yet injected."""
        with self._lock:
            self._faults.clear()
            self._by_method.clear()

    def _next_fault(self, method: str = "") -> Fault | None:
        with self._lock:
            self.requests += 1
            if method in self._by_method:
                self.injected += 1
                return self._by_method[method]
            if self._faults:
                self.injected += 1
                return self._faults.pop(0)
            return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._next_fault(self.command)
                if fault is not None:
                    self.send_response(fault.status)
                    for name, value in fault.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(fault.body)))
                    self.end_headers()
                    self.wfile.write(fault.body)
                    return
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=60
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_HEADERS and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
