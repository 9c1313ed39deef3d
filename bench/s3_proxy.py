"""A counting HTTP proxy in front of an S3 endpoint (the bench's moto server): requests per kind.

Neither cloudkeep nor restic says how many requests a run makes; on a real cloud every one costs
latency and money. Point a tool's endpoint at the proxy, run it, then read the counts:

    python bench/s3_proxy.py --upstream http://127.0.0.1:5000 --port 5001 &
    curl -s http://127.0.0.1:5001/__counts        # JSON {"GET object": 12, "LIST": 7, ...}; resets them

Kinds: LIST (GET on a bucket with ``list-type``/``prefix``), GET object, HEAD, PUT, DELETE, POST
(multipart), other bucket calls by their query (``?object-lock``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
_counts: Counter[str] = Counter()
_lock = threading.Lock()


def kind(method: str, path: str) -> str:
    """What a request is, from its method and path-style URL (``/bucket/key?query``)."""
    parts = urlsplit(path)
    query = parse_qs(parts.query, keep_blank_values=True)
    has_key = bool(parts.path.lstrip("/").partition("/")[2])
    if method == "GET" and not has_key and ("list-type" in query or "prefix" in query or not query):
        return "LIST"
    if not has_key and query:
        return f"{method} ?{sorted(query)[0]}"
    return f"{method} object" if method in ("GET", "PUT") else method


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = urlsplit("http://127.0.0.1:5000")
    local = threading.local()
    trace = False

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: one line per request would cost more than the request."""

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self.local, "connection", None)
        if connection is None:
            host = self.upstream.hostname or "127.0.0.1"  # (an upstream URL always names one)
            connection = http.client.HTTPConnection(host, self.upstream.port, timeout=120)
            self.local.connection = connection
        return connection

    def _relay(self) -> None:
        if self.path.startswith("/__counts"):
            with _lock:
                body = json.dumps(dict(sorted(_counts.items()))).encode()
                _counts.clear()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        with _lock:
            _counts[kind(self.command, self.path)] += 1
        if self.trace:
            print(self.command, self.path, flush=True)
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        for attempt in (1, 2):  # a kept-alive upstream connection may have been closed meanwhile
            connection = self._connection()
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, OSError):
                connection.close()
                self.local.connection = None
                if attempt == 2:
                    raise
        self.send_response(response.status)
        head = self.command == "HEAD"  # keeps the object's Content-Length: clients read sizes there
        for name, value in response.getheaders():
            if name.lower() not in _HOP and (head or name.lower() != "content-length"):
                self.send_header(name, value)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        """The request body, de-chunked (restic streams uploads with chunked transfer encoding)."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""
        parts = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            parts.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailers, up to the blank line
            pass
        return b"".join(parts)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--upstream", required=True, help="the S3 endpoint, e.g. http://127.0.0.1:5000")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--trace", action="store_true", help="print each request's method and path")
    args = parser.parse_args()
    Handler.upstream, Handler.trace = urlsplit(args.upstream), args.trace
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
