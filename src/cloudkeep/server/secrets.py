"""Secrets at rest: credential material and repository passwords sealed with the server master key.

The master key lives in a file outside the database (mode 0600). Sealed values carry the key id,
so a rotation can re-seal everything under a new key while old values stay readable.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cloudkeep.errors import AuthenticationError, ConfigurationError

_VERSION = b"\x01"


class SecretBox:
    """AES-256-GCM with the master key; ``seal``/``open`` JSON-able values."""

    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        self._keys = keys
        self._current = current

    @classmethod
    def load_or_create(cls, path: Path) -> SecretBox:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            key_id = pysecrets.token_hex(4)
            data = {"current": key_id, "keys": {key_id: AESGCM.generate_key(bit_length=256).hex()}}
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
        try:
            data = json.loads(path.read_text())
            keys = {k: bytes.fromhex(v) for k, v in data["keys"].items()}
            return cls(keys, data["current"])
        except (ValueError, KeyError) as exc:
            raise ConfigurationError(f"master key file {path} is unreadable: {exc}") from exc

    @property
    def key_id(self) -> str:
        return self._current

    def seal(self, value: Any) -> bytes:
        nonce = pysecrets.token_bytes(12)
        kid = self._current.encode()
        plaintext = json.dumps(value).encode()
        ct = AESGCM(self._keys[self._current]).encrypt(nonce, plaintext, kid)
        return _VERSION + bytes([len(kid)]) + kid + nonce + ct

    def open(self, sealed: bytes) -> Any:
        if not sealed or sealed[:1] != _VERSION:
            raise AuthenticationError("sealed secret has an unknown format")
        klen = sealed[1]
        kid = sealed[2 : 2 + klen]
        nonce = sealed[2 + klen : 14 + klen]
        key = self._keys.get(kid.decode())
        if key is None:
            raise AuthenticationError(f"secret sealed with master key {kid.decode()!r}, which this server does not hold")
        try:
            return json.loads(AESGCM(key).decrypt(nonce, sealed[14 + klen :], kid))
        except InvalidTag as exc:
            raise AuthenticationError("sealed secret failed authentication (wrong master key or tampering)") from exc
