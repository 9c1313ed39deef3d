"""The signed envelope every queue message travels in, and the validation every receiver runs.

Wire form: the canonical JSON (``crypto.canonical_json``) of the envelope fields, with
``signature`` = Ed25519 over the canonical JSON of all the other fields. Receivers verify the
signature over the bytes *as received* (re-canonicalised from the parsed JSON), never over a
re-serialised model, so schema defaults can never change what was signed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloudkeep.compat import UTC
from cloudkeep.pathnames import safe_text
from cloudkeep.protocol import crypto
from cloudkeep.protocol.bodies import BODIES, Body, RepositoryAccess
from cloudkeep.protocol.errors import (
    ExpiredMessage,
    FutureMessage,
    MalformedMessage,
    OversizedMessage,
    ReplayedMessage,
    SealError,
    UnknownSender,
    UnsignedMessage,
    UnsupportedVersion,
    WrongRecipient,
)
from cloudkeep.protocol.reports import MAX_MESSAGE_BYTES, MAX_TTL, PROTOCOL_VERSION, sign_fields

DEFAULT_CLOCK_SKEW = 300.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int
    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    correlation_id: str | None = None
    sender: str = Field(min_length=1, max_length=200)
    recipient: str = Field(min_length=1, max_length=200)
    kind: str
    issued_at: datetime
    expires_at: datetime
    body: dict[str, Any]
    sealed: str | None = None
    signature: str | None = None

    def parsed_body(self) -> Body:
        """The body validated against its kind's model."""
        try:
            model = BODIES[self.kind]
        except KeyError:
            raise MalformedMessage(f"unknown message kind {self.kind!r}") from None
        try:
            return model.model_validate(self.body)
        except ValidationError as exc:
            raise MalformedMessage(f"{self.kind} body is invalid: {_short(exc)}") from None

    def open_sealed(self, key: X25519PrivateKey) -> Any:
        if self.sealed is None:
            raise SealError(f"{self.kind} message {self.id} carries no sealed secrets")
        return crypto.unseal(key, self.sealed, associated=self.id)

    def repository(self, key: X25519PrivateKey) -> RepositoryAccess:
        """The sealed repository access of a backup/restore/… command."""
        try:
            return RepositoryAccess.model_validate(self.open_sealed(key))
        except ValidationError as exc:
            raise MalformedMessage(f"sealed repository access is invalid: {_short(exc)}") from None

    def unsigned_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"signature"})


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()[:5])


def make_envelope(
    kind: str,
    body: Body | dict[str, Any],
    *,
    sender: str,
    recipient: str,
    ttl: float = 3600.0,
    correlation_id: str | None = None,
    message_id: str | None = None,
    secrets: Any = None,
    seal_to: X25519PublicKey | None = None,
    now: datetime | None = None,
) -> Envelope:
    """Build an unsigned envelope; ``secrets`` are sealed to ``seal_to`` (the recipient's X25519 key)."""
    issued = now or utcnow()
    if ttl <= 0 or timedelta(seconds=ttl) > MAX_TTL:
        raise MalformedMessage(f"ttl {ttl}s out of range (0, {MAX_TTL.total_seconds():.0f}]")
    data = body.model_dump(mode="json") if isinstance(body, Body) else dict(body)
    # A file name with bytes that are not UTF-8 must never make a message unsendable: any such
    # text left in a body is displayed (exact names travel as ``*_b64``; see cloudkeep.pathnames).
    data = safe_text(data)
    envelope = Envelope(
        version=PROTOCOL_VERSION, id=message_id or uuid.uuid4().hex, correlation_id=correlation_id,
        sender=sender, recipient=recipient, kind=kind, issued_at=issued,
        expires_at=issued + timedelta(seconds=ttl), body=data,
    )  # fmt: skip
    envelope.parsed_body()  # refuse to send what the receiver would reject
    if secrets is not None:
        if seal_to is None:
            raise SealError("secrets given but no recipient encryption key to seal them to")
        envelope.sealed = crypto.seal(seal_to, secrets, associated=envelope.id)
    return envelope


def sign_envelope(envelope: Envelope, key: Ed25519PrivateKey) -> str:
    """Sign and serialise; the returned text is what goes on the queue."""
    text, envelope.signature = sign_fields(envelope.unsigned_dict(), key)
    return text


KeyLookup = Callable[[str], Optional[Ed25519PublicKey]]  # a runtime alias: no `|` before 3.10


class MessageValidator:
    """Checks, in order: size, JSON, version, schema, signature present, recipient, sender key,
    signature, body schema, expiry / clock skew, replay. Raises a distinct ``ProtocolError`` each."""

    def __init__(
        self,
        *,
        me: str,
        sender_key: KeyLookup,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        max_bytes: int = MAX_MESSAGE_BYTES,
        kinds: frozenset[str] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.me = me
        self.sender_key = sender_key
        self.skew = timedelta(seconds=clock_skew)
        self.max_bytes = max_bytes
        self.kinds = kinds
        self.clock = clock

    def parse(self, text: str | bytes) -> tuple[Envelope, dict[str, Any]]:
        """Size, JSON and envelope schema only (no trust yet)."""
        raw = text.encode() if isinstance(text, str) else text
        if len(raw) > self.max_bytes:
            raise OversizedMessage(f"message of {len(raw)} bytes exceeds the {self.max_bytes}-byte limit")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedMessage(f"message is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MalformedMessage("message is not a JSON object")
        if data.get("version") != PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"envelope version {data.get('version')!r} is not supported "
                f"(this side speaks {PROTOCOL_VERSION})",
                hint="upgrade the older side (server or machine bundle)",
            )
        try:
            envelope = Envelope.model_validate(data)
        except ValidationError as exc:
            raise MalformedMessage(f"envelope is invalid: {_short(exc)}") from None
        return envelope, data

    def validate(
        self, text: str | bytes, *, seen: Callable[[str], bool] | None = None, check_time: bool = True
    ) -> Envelope:
        """Return the trusted envelope or raise the ``ProtocolError`` naming what is wrong with it.

        ``check_time=False`` is for a hand-off inside the machine of a message validated on arrival.
        """
        envelope, data = self.parse(text)
        signature = data.pop("signature", None)
        if not signature:
            raise UnsignedMessage(f"{envelope.kind} message {envelope.id} from {envelope.sender!r} unsigned")
        if envelope.recipient != self.me:
            raise WrongRecipient(f"message {envelope.id} is for {envelope.recipient!r}, not {self.me!r}")
        if self.kinds is not None and envelope.kind not in self.kinds:
            raise MalformedMessage(f"kind {envelope.kind!r} is not accepted here")
        key = self.sender_key(envelope.sender)
        if key is None:
            raise UnknownSender(f"no registered key for sender {envelope.sender!r}")
        crypto.verify(key, signature, crypto.canonical_json(data))
        envelope.parsed_body()
        if check_time:
            self.check_time(envelope)
        if seen is not None and seen(envelope.id):
            raise ReplayedMessage(f"message {envelope.id} ({envelope.kind}) was already received")
        return envelope

    def check_time(self, envelope: Envelope) -> None:
        now = self.clock()
        if envelope.expires_at <= envelope.issued_at or envelope.expires_at - envelope.issued_at > MAX_TTL:
            raise MalformedMessage(f"message {envelope.id} has an invalid lifetime")
        if envelope.issued_at > now + self.skew:
            raise FutureMessage(
                f"message {envelope.id} is issued "
                f"{(envelope.issued_at - now).total_seconds():.0f}s in the future",
                hint="check the clocks (NTP) of the server and the machine",
            )
        if envelope.expires_at + self.skew < now:
            expired = envelope.expires_at.isoformat()
            raise ExpiredMessage(f"message {envelope.id} ({envelope.kind}) expired at {expired}")
