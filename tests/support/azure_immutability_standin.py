"""A stand-in for Azure's version-level immutability: a proxy in front of Azurite.

Azurite has no immutability policies (tests/support notes), so this proxy (a test stand-in,
clearly named) adds what Azure does, on the wire, and forwards everything else to the real
Azurite unchanged (requests stay signed as the SDK signed them):

- container properties say ``x-ms-immutable-storage-with-versioning-enabled: true``;
- a blob PUT / block-list commit carrying ``x-ms-immutability-policy-until-date`` and
  ``-mode`` records a policy; ``PUT ?comp=immutabilityPolicies`` sets one (a locked policy can
  only be lengthened);
- blob properties carry the policy headers back, as Azure's do, and so does a listing that asks
  for them (``include=immutabilitypolicy``: ``ImmutabilityPolicyUntilDate`` / ``Mode``);
- DELETE, overwrite and metadata changes of a blob whose policy has not expired are refused
  with ``409 BlobImmutableDueToPolicy``, whatever the SAS allows.

Every policy request is checked for Azure's shape (mode ``Locked``/``Unlocked``, an RFC 1123
date) and kept in ``policy_requests`` for the test to inspect.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support.proxy import LoopbackServer, StandInHandler, ask_upstream, relay

_UNTIL = "x-ms-immutability-policy-until-date"
_MODE = "x-ms-immutability-policy-mode"


@dataclass
class Policy:
    until: datetime
    mode: str


def _error(code: str, message: str) -> bytes:
    xml = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return ('<?xml version="1.0" encoding="utf-8"?>' + xml).encode()


class AzureImmutabilityStandin:
    def __init__(self, upstream: str, *, clock: Callable[[], datetime] | None = None) -> None:
        self.upstream = urlsplit(upstream)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.policies: dict[str, Policy] = {}  # by blob path (/account/container/blob)
        self.policy_requests: list[tuple[str, str, str]] = []  # (path, until header, mode header)
        self.refused: list[tuple[str, str]] = []  # (method, path) refused because of a policy
        self._lock = threading.Lock()
        self._server = LoopbackServer(self._handler())

    @property
    def blob_endpoint(self) -> str:
        return f"{self._server.url}{self.upstream.path}"

    def _locked(self, path: str) -> Policy | None:
        policy = self.policies.get(path)
        return policy if policy is not None and policy.until > self.clock() else None

    def _parse_policy(self, path: str, headers: dict[str, str]) -> Policy | None:
        """The policy a request sets, or ``None``; ``ValueError`` for a shape Azure would refuse."""
        until, mode = headers.get(_UNTIL), headers.get(_MODE)
        if until is None and mode is None:
            return None
        self.policy_requests.append((path, until or "", mode or ""))
        if mode not in ("Locked", "Unlocked") or until is None:
            raise ValueError(f"bad immutability policy mode {mode!r} or missing date")
        return Policy(parsedate_to_datetime(until), mode)  # raises ValueError unless RFC 1123

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(StandInHandler):
            def _refuse(self, path: str) -> None:
                standin.refused.append((self.command, path))
                error = _error(
                    "BlobImmutableDueToPolicy", "This operation is not permitted as the blob is immutable"
                )
                self.answer(409, error, {"x-ms-error-code": "BlobImmutableDueToPolicy",
                                          "Content-Type": "application/xml"})  # fmt: skip

            def _forward(self) -> None:
                body = self.read_body()
                url = urlsplit(self.path)
                path = unquote(url.path)
                query = parse_qs(url.query, keep_blank_values=True)
                comp = (query.get("comp") or [""])[0]
                is_container = (query.get("restype") or [""])[0] == "container"
                headers = self.forward_headers()
                lowered = {k.lower(): v for k, v in headers.items()}
                with standin._lock:
                    locked = None if is_container else standin._locked(path)
                    try:
                        policy = standin._parse_policy(path, lowered) if self.command == "PUT" else None
                    except ValueError as exc:
                        self.answer(
                            400,
                            _error("InvalidHeaderValue", str(exc)),
                            {"x-ms-error-code": "InvalidHeaderValue"},
                        )
                        return
                    if comp == "immutabilityPolicies":
                        if policy is None or (
                            locked and locked.mode == "Locked" and policy.until < locked.until
                        ):
                            code = "ImmutabilityPolicyCannotBeShortened"
                            self.answer(409, _error(code, "no"), {"x-ms-error-code": code})
                            return
                        standin.policies[path] = policy
                        self.answer(
                            200, b"", {_UNTIL: format_datetime(policy.until, usegmt=True), _MODE: policy.mode}
                        )
                        return
                    writes = self.command == "DELETE" or (
                        self.command == "PUT" and comp in ("", "blocklist", "metadata")
                    )
                    if locked is not None and writes:
                        self._refuse(path)
                        return
                status, answer_headers, data = ask_upstream(
                    standin.upstream, self.command, self.path, body, headers
                )
                extra: dict[str, str] = {}
                with standin._lock:
                    if status < 300 and policy is not None and comp in ("", "blocklist"):
                        standin.policies[path] = policy
                    if status < 300 and self.command == "DELETE":
                        standin.policies.pop(path, None)
                    current = standin.policies.get(path)
                include = ",".join(query.get("include") or []).lower()
                if status == 200 and comp == "list" and "immutabilitypolicy" in include:
                    data = standin._listed_policies(path, data)
                if is_container and self.command in ("GET", "HEAD") and not comp:
                    extra["x-ms-immutable-storage-with-versioning-enabled"] = "true"
                elif current is not None and self.command in ("GET", "HEAD"):
                    extra[_UNTIL] = format_datetime(current.until, usegmt=True)
                    extra[_MODE] = current.mode.lower()
                relay(self, status, answer_headers, data, extra)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler

    def _listed_policies(self, container_path: str, listing: bytes) -> bytes:
        """Each listed blob's policy in its ``Properties``, as Azure lists them."""

        def with_policy(match: re.Match[bytes]) -> bytes:
            name = html.unescape(match.group(2).decode())
            with self._lock:
                policy = self.policies.get(f"{container_path}/{name}")
            if policy is None:
                return match.group(0)
            until = format_datetime(policy.until, usegmt=True)
            added = (
                f"<ImmutabilityPolicyUntilDate>{until}</ImmutabilityPolicyUntilDate>"
                f"<ImmutabilityPolicyMode>{policy.mode.lower()}</ImmutabilityPolicyMode>"
            )
            return match.group(1) + added.encode()

        return re.sub(rb"(<Blob><Name>([^<]*)</Name>.*?<Properties>)", with_policy, listing, flags=re.DOTALL)

    def close(self) -> None:
        self._server.close()
