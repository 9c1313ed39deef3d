"""A tiny loopback reverse proxy that injects failures (a test fake, clearly named).

Put it between a client and a real peer (moto server) to answer the next N requests with an
error such as 503 or a 429 throttling response, then forward normally. Clients are tested
unchanged: their retry logic sees real HTTP responses.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from tests.support.proxy import LoopbackServer, StandInHandler, ask_upstream, relay


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
        self._server = LoopbackServer(self._handler())

    @property
    def endpoint(self) -> str:
        return self._server.url

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

        class Handler(StandInHandler):
            def _forward(self) -> None:
                body = self.read_body()
                fault = proxy._next_fault(self.command)
                if fault is not None:
                    self.answer(fault.status, fault.body, fault.headers)
                    return
                status, headers, data = ask_upstream(
                    proxy.upstream, self.command, self.path, body, self.forward_headers()
                )
                relay(self, status, headers, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler

    def close(self) -> None:
        self._server.close()
