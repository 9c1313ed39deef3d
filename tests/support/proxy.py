"""What the test proxies in front of a real peer share: ask the peer, relay its answer.

The stand-ins (tests/support/s3_standin.py, azure_immutability_standin.py) alter requests or
refuse some; whatever they let through goes to the peer and comes back through these two.
"""

from __future__ import annotations

import http.client
from http.server import BaseHTTPRequestHandler
from urllib.parse import SplitResult

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


def ask_upstream(
    upstream: SplitResult, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request to the peer; its status, headers and whole body."""
    connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
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
