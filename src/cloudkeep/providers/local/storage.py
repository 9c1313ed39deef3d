"""Local object storage: folders, HMAC-signed URLs served on loopback, ``write_prefix`` credentials.

A *location* is a folder: absolute, or relative to the provider's storage root. Signed URLs
look like ``http://127.0.0.1:PORT/o/<location>/<key>?expires=<unix>&sig=<hex>``; a small
threaded HTTP server (started on first use) checks the HMAC-SHA256 signature over method, path
and expiry and answers 403 to anything tampered with or expired — the local counterpart of an
S3 presigned URL or an Azure SAS. Objects are read and written through the ``file://`` backend,
so a signed PUT lands exactly where a backup would.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from cloudkeep.compat import UTC
from cloudkeep.errors import ConfigurationError
from cloudkeep.providers.base import ScopedCredentials, StorageService
from cloudkeep.storage.base import ObjectNotFoundError, ObjectStore, open_store

MAX_BODY_BYTES = 1 << 30
PSEUDO_FILE_SYSTEMS = frozenset({"proc", "sys", "dev"})  # their files are the kernel's, not storage


def _signature(key: bytes, method: str, path: str, expires: int) -> str:
    return hmac.new(key, f"{method}\n{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


class SignedUrlServer:
    """Serves ``/o/<folder>/<key>`` for requests whose signature and expiry check out."""

    def __init__(self, signing_key: bytes, host: str = "127.0.0.1", port: int = 0) -> None:
        self.signing_key = signing_key
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="cloudkeep-signed-urls", daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def sign(self, method: str, folder: Path, key: str, expires_seconds: int) -> str:
        # The folder is one path segment (slashes escaped), so the server can split folder from key.
        path = "/o/" + quote(str(folder.resolve()), safe="") + "/" + quote(key.lstrip("/"))
        expires = int(time.time()) + expires_seconds
        signature = _signature(self.signing_key, method, path, expires)
        return f"{self.base_url}{path}?expires={expires}&sig={signature}"

    def verify(self, method: str, raw_path: str) -> tuple[Path, str] | None:
        """Return (folder, key) when the request is authentic and unexpired, else None."""
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        try:
            expires = int(query["expires"][0])
            sig = query["sig"][0]
        except (KeyError, ValueError, IndexError):
            return None
        expected = _signature(self.signing_key, method, parts.path, expires)
        if not hmac.compare_digest(expected, sig) or expires < time.time():
            return None
        folder, _, key = parts.path.removeprefix("/o/").partition("/")
        if not folder or not key:
            return None
        return Path(unquote(folder)), unquote(key)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _refuse(self, status: int, reason: str) -> None:
                body = reason.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                target = server.verify("GET", self.path)
                if target is None:
                    return self._refuse(403, "signature invalid or expired")
                try:
                    data = open_store(target[0].as_uri()).get(target[1])
                except ObjectNotFoundError:
                    return self._refuse(404, "no such object")
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                target = server.verify("PUT", self.path)
                if target is None:
                    return self._refuse(403, "signature invalid or expired")
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    return self._refuse(413, "object too large")
                open_store(target[0].as_uri()).put(target[1], self.rfile.read(length))
                self._refuse(201, "")

        return Handler

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class LocalStorageService(StorageService):
    def __init__(
        self, storage_root: Path, signing_key: bytes, *, url_host: str = "127.0.0.1", url_port: int = 0
    ):
        self.storage_root = Path(storage_root)
        self.signing_key = signing_key
        self._url_host, self._url_port = url_host, url_port

    def folder(self, location: str) -> Path:
        path = Path(location.removeprefix("file://"))
        if not path.is_absolute():
            if ".." in path.parts:
                raise ConfigurationError(f"storage location {location!r} escapes the storage root")
            path = self.storage_root / path
        return path

    def open_store(self, location: str) -> ObjectStore:
        return open_store(self.folder(location).as_uri())

    def ensure_container(self, location: str, *, object_lock: bool = False) -> None:
        """Create the folder; refuse what a folder cannot be or promise, before anything is written."""
        if object_lock:
            raise ConfigurationError(
                f"the folder {location!r} cannot enforce immutability: files in it can always be deleted",
                hint="drop --immutability-days, or use an S3 bucket with Object Lock or an Azure container",
            )
        path = self.folder(location)
        resolved = path.resolve()
        if resolved.parts[1:2] and resolved.parts[1] in PSEUDO_FILE_SYSTEMS:
            raise ConfigurationError(
                f"storage location {location!r} is under /{resolved.parts[1]}, a kernel file system",
                hint="choose a folder on a disk, e.g. /var/backups/cloudkeep",
            )
        if resolved.exists() and not resolved.is_dir():
            raise ConfigurationError(
                f"storage location {location!r} is a file, not a folder", hint="choose a folder"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the folder {location!r}: {exc.strerror or exc}",
                hint="choose a folder the server can create and write to",
            ) from exc

    @property
    def server(self) -> SignedUrlServer:
        return shared_server(self.signing_key, self._url_host, self._url_port)

    def signed_url(
        self, location: str, key: str, *, method: Literal["GET", "PUT"], expires_seconds: int
    ) -> str:
        return self.server.sign(method, self.folder(location), key, expires_seconds)

    def scoped_credentials(self, location: str, prefix: str, *, expires_seconds: int) -> ScopedCredentials:
        """``file://`` with ``write_prefix``: the backend refuses writes outside ``prefix``, and for
        an agent (a non-empty prefix) every overwrite and delete (``append_only``).

        Expiry is advisory here (a local path needs no secret); clouds enforce it.
        """
        options: dict[str, Any] = {"write_prefix": prefix}
        if prefix:
            options["append_only"] = True
        return ScopedCredentials(
            provider="local",
            store_url=self.folder(location).resolve().as_uri(),
            options=options,
            expires_at=datetime.now(UTC) + timedelta(seconds=expires_seconds),
        )

    def close(self) -> None:
        """Nothing to release: the signed-URL server is shared and outlives this service (its URLs must)."""


_SERVERS: dict[tuple[bytes, str, int], SignedUrlServer] = {}
_SERVERS_LOCK = threading.Lock()


def shared_server(signing_key: bytes, host: str = "127.0.0.1", port: int = 0) -> SignedUrlServer:
    """One server per key and address in this process, started on first use.

    Providers are cheap and built per request; URLs they sign must keep working after the
    provider object is gone, so the server lives for the process (a daemon thread).
    """
    with _SERVERS_LOCK:
        key = (signing_key, host, port)
        if key not in _SERVERS:
            _SERVERS[key] = SignedUrlServer(signing_key, host, port)
        return _SERVERS[key]


def new_signing_key() -> bytes:
    return secrets.token_bytes(32)
