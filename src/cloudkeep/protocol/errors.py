"""Why a message was refused. Each reason is its own type so callers (and tests) can tell them apart.

Every rejected message is logged and dead-lettered by the receiver, never executed.
"""

from __future__ import annotations

from cloudkeep.errors import AuthenticationError


class ProtocolError(AuthenticationError):
    """Base of every message rejection; ``reason`` is a short machine-readable tag for logs and DLQs."""

    reason = "invalid"


class MalformedMessage(ProtocolError):
    """Not JSON, or does not match the envelope / body schema for its kind."""

    reason = "malformed"


class UnsupportedVersion(MalformedMessage):
    """An envelope version this code does not speak (upgrade the older side)."""

    reason = "unsupported-version"


class OversizedMessage(ProtocolError):
    """Larger than the 64 KiB every queue accepts; large payloads must go by reference."""

    reason = "oversized"


class UnsignedMessage(ProtocolError):
    """No signature at all."""

    reason = "unsigned"


class BadSignature(ProtocolError):
    """The signature does not verify with the sender's registered key (forged or tampered)."""

    reason = "bad-signature"


class UnknownSender(ProtocolError):
    """The sender has no registered key here (not a machine of this server, or not yet deployed)."""

    reason = "unknown-sender"


class WrongRecipient(ProtocolError):
    """Addressed to someone else: a machine never acts on a message meant for another machine."""

    reason = "wrong-recipient"


class ExpiredMessage(ProtocolError):
    """Past its ``expires_at`` (beyond the clock-skew allowance)."""

    reason = "expired"


class FutureMessage(ProtocolError):
    """Issued further in the future than the clock-skew allowance (a wrong clock or a forged time)."""

    reason = "future-dated"


class ReplayedMessage(ProtocolError):
    """An id already seen: the command is never run again (the stored result may be re-posted)."""

    reason = "replayed"


class SealError(ProtocolError):
    """The sealed secrets cannot be opened with this recipient's key."""

    reason = "unsealable"
