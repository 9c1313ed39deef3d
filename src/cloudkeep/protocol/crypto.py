"""Keys, signatures and sealing for messages.

Signatures are Ed25519 over the canonical JSON of the envelope. Secrets travel *sealed* to the
recipient's X25519 key: an ephemeral X25519 key agreement, HKDF-SHA256 to a ChaCha20-Poly1305
key, with the envelope id as associated data so a sealed blob cannot be moved into another
message. Only the intended machine can read a repository password or scoped credentials, even
though the queue service (and anyone with read access to it) sees the message.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cloudkeep.protocol.errors import BadSignature, MalformedMessage, SealError

_SEAL_INFO = b"cloudkeep-seal-v1"


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise MalformedMessage(f"invalid base64: {exc}") from None


def canonical_json(value: Any) -> bytes:
    """The one byte form that is signed: sorted keys, no whitespace, UTF-8."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode()


def public_raw(key: Ed25519PrivateKey | X25519PrivateKey | Ed25519PublicKey | X25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, (Ed25519PrivateKey, X25519PrivateKey)) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_raw(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    raw, fmt = serialization.Encoding.Raw, serialization.PrivateFormat.Raw
    return key.private_bytes(raw, fmt, serialization.NoEncryption())


def load_verify_key(b64: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(b64decode(b64))
    except ValueError as exc:
        raise MalformedMessage(f"invalid Ed25519 public key: {exc}") from None


def load_encryption_key(b64: str) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(b64decode(b64))
    except ValueError as exc:
        raise MalformedMessage(f"invalid X25519 public key: {exc}") from None


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    return b64encode(key.sign(data))


def verify(key: Ed25519PublicKey, signature_b64: str, data: bytes) -> None:
    try:
        key.verify(b64decode(signature_b64), data)
    except (InvalidSignature, MalformedMessage):
        raise BadSignature("signature does not verify with the sender's registered key") from None


def _derive(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=ephemeral + recipient, info=_SEAL_INFO).derive(shared)


def seal(recipient: X25519PublicKey, value: Any, *, associated: str) -> str:
    """Encrypt a JSON value so only the holder of ``recipient``'s private key can read it."""
    ephemeral = X25519PrivateKey.generate()
    epub, rpub = public_raw(ephemeral), public_raw(recipient)
    key = _derive(ephemeral.exchange(recipient), epub, rpub)
    nonce = os.urandom(12)
    ciphertext = ChaCha20Poly1305(key).encrypt(nonce, canonical_json(value), associated.encode())
    return b64encode(b"\x01" + epub + nonce + ciphertext)


def unseal(private: X25519PrivateKey, sealed_b64: str, *, associated: str) -> Any:
    blob = b64decode(sealed_b64)
    if len(blob) < 1 + 32 + 12 + 16 or blob[0] != 1:
        raise SealError("sealed field has an unknown format")
    epub, nonce, ciphertext = blob[1:33], blob[33:45], blob[45:]
    try:
        key = _derive(private.exchange(X25519PublicKey.from_public_bytes(epub)), epub, public_raw(private))
        plain = ChaCha20Poly1305(key).decrypt(nonce, ciphertext, associated.encode())
    except (InvalidTag, ValueError):
        raise SealError(
            "sealed secrets cannot be opened with this machine's key (sealed for another machine?)"
        ) from None
    return json.loads(plain)
