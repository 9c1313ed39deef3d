"""Envelopes built and signed from plain dicts: what an idle machine service sends, without pydantic.

The message service sends a heartbeat every ``heartbeat_seconds`` for as long as it runs. Built
through the pydantic models, that would keep pydantic and every body model (~10 MB) in each idle
machine's memory (issue 14), although nothing untrusted is parsed. The fields and bytes are the
ones ``envelope.make_envelope`` + ``sign_envelope`` produce (``sign_envelope`` uses ``sign_fields``
here; a test compares a heartbeat of both ways byte for byte), and receivers validate it like any
other message. Everything that is *received* still goes through ``envelope.MessageValidator``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloudkeep.compat import UTC
from cloudkeep.pathnames import safe_text
from cloudkeep.protocol import crypto
from cloudkeep.protocol.errors import MalformedMessage, OversizedMessage

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024  # the smallest queue limit (Azure Queue Storage); SQS allows more
MAX_TTL = timedelta(days=7)  # bounds how long receivers must remember seen ids


def wire_time(moment: datetime) -> str:
    """An aware datetime as the envelope's JSON carries it: pydantic's form (ISO 8601, UTC as ``Z``)."""
    text = moment.isoformat()
    return text[: -len("+00:00")] + "Z" if text.endswith("+00:00") else text


def report_fields(
    kind: str,
    body: dict[str, Any],
    *,
    sender: str,
    recipient: str,
    ttl: float,
    correlation_id: str | None = None,
    message_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The unsigned fields of an envelope without sealed secrets, as ``Envelope.unsigned_dict``."""
    if ttl <= 0 or timedelta(seconds=ttl) > MAX_TTL:
        raise MalformedMessage(f"ttl {ttl}s out of range (0, {MAX_TTL.total_seconds():.0f}]")
    issued = now or datetime.now(UTC)
    return {
        "version": PROTOCOL_VERSION, "id": message_id or uuid.uuid4().hex,
        "correlation_id": correlation_id, "sender": sender, "recipient": recipient, "kind": kind,
        "issued_at": wire_time(issued), "expires_at": wire_time(issued + timedelta(seconds=ttl)),
        "body": safe_text(dict(body)), "sealed": None,
    }  # fmt: skip


def sign_fields(data: dict[str, Any], key: Ed25519PrivateKey) -> tuple[str, str]:
    """Sign the unsigned fields; returns (the text that goes on the queue, the signature)."""
    signature = crypto.sign(key, crypto.canonical_json(data))
    text = crypto.canonical_json({**data, "signature": signature}).decode()
    size = len(text.encode())
    if size > MAX_MESSAGE_BYTES:
        raise OversizedMessage(
            f"{data.get('kind')} message is {size} bytes, over the {MAX_MESSAGE_BYTES}-byte limit",
            hint="send large payloads by reference (store them and send the key)",
        )
    return text, signature
