"""A stand-in for a less capable S3-compatible store: a loopback proxy in front of moto.

moto behaves like AWS; MinIO-, Ceph- or Wasabi-style stores sometimes do not. This proxy (a test
stand-in, clearly named) forwards to a real moto server and, per switch, takes away one
behaviour the way such stores are observed to:

- ``keep_chunked_framing``: does not understand aws-chunked uploads and stores the framing
  (chunk sizes, trailing checksum) as the object's bytes;
- ``ignore_if_none_match``: drops ``If-None-Match`` so create-only writes overwrite;
- ``no_sts``: answers STS calls with a plain ``404 Not Found`` page;
- ``not_implemented``: answers 501 ``NotImplemented`` to requests whose query names one of
  these S3 sub-resources (``object-lock``, ``retention`` …).

It can serve HTTPS itself (``tls``), so the client side of a test runs exactly as against a
remote store over TLS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.support.proxy import LoopbackServer, StandInHandler, ask_upstream, relay
from tests.support.tls import TlsFiles

_CHUNKED_HEADERS = {"content-encoding", "x-amz-decoded-content-length", "x-amz-trailer",
                    "x-amz-sdk-checksum-algorithm"}  # fmt: skip
_NOT_IMPLEMENTED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code>'
    b"<Message>A header or query you provided implies functionality that is not implemented"
    b"</Message></Error>"
)


@dataclass
class StoreQuirks:
    keep_chunked_framing: bool = False
    ignore_if_none_match: bool = False
    no_sts: bool = False
    not_implemented: set[str] = field(default_factory=set)


class S3CompatStandin:
    def __init__(
        self, upstream: str, *, tls: TlsFiles | None = None, quirks: StoreQuirks | None = None
    ) -> None:
        self.upstream = urlsplit(upstream)
        self.quirks = quirks or StoreQuirks()
        self.stored_framing = 0  # uploads whose aws-chunked framing was kept as data
        self.uploads: list[tuple[str, dict[str, str]]] = []  # (path, lower-cased headers) of PUTs
        self.tls = tls
        self._server = LoopbackServer(self._handler(), tls=tls)

    @property
    def endpoint(self) -> str:
        return self._server.url

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(StandInHandler):
            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(body)
                        body += self.rfile.read(size)
                        self.rfile.readline()
                return self.read_body()

            def _forward(self) -> None:
                body = self._body()
                quirks = standin.quirks
                headers = self.forward_headers()
                is_sts = self.command == "POST" and b"Action=" in body and urlsplit(self.path).path == "/"
                if quirks.no_sts and is_sts:
                    self.answer(404, b"Not Found", {"Content-Type": "text/plain"})
                    return
                query = set(parse_qs(urlsplit(self.path).query, keep_blank_values=True))
                if query & quirks.not_implemented:
                    self.answer(501, _NOT_IMPLEMENTED, {"Content-Type": "application/xml"})
                    return
                if self.command == "PUT":
                    standin.uploads.append((self.path, {k.lower(): v for k, v in headers.items()}))
                if quirks.ignore_if_none_match:
                    headers = {k: v for k, v in headers.items() if k.lower() != "if-none-match"}
                if quirks.keep_chunked_framing and "aws-chunked" in headers.get("Content-Encoding", ""):
                    # The framed body goes on as if it were the object, as a naive store keeps it.
                    headers = {k: v for k, v in headers.items() if k.lower() not in _CHUNKED_HEADERS}
                    headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
                    standin.stored_framing += 1
                headers["Content-Length"] = str(len(body))
                status, answer_headers, data = ask_upstream(
                    standin.upstream, self.command, self.path, body, headers
                )
                relay(self, status, answer_headers, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler

    def close(self) -> None:
        self._server.close()
