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

    def __init__(self, keys: dict[str, bytes], current: str, path: Path | None = None) -> None:
        self._keys = keys
        self._current = current
        self._path = path

    @classmethod
    def load_or_create(cls, path: Path) -> SecretBox:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            key_id = pysecrets.token_hex(4)
            data = {"current": key_id, "keys": {key_id: AESGCM.generate_key(bit_length=256).hex()}}
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{pysecrets.token_hex(4)}.new")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # complete file or nothing; when workers race, the first link wins
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        try:
            data = json.loads(path.read_text())
            keys = {k: bytes.fromhex(v) for k, v in data["keys"].items()}
            return cls(keys, data["current"], path)
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
        if key is None and self._path is not None and self._path.exists():
            self._reload()  # another worker may have rotated the master key since we loaded it
            key = self._keys.get(kid.decode())
        if key is None:
            raise AuthenticationError(
                f"secret sealed with master key {kid.decode()!r}, which this server does not hold",
                hint="restore the master key file that sealed it (see docs: master-key rotation)",
            )
        try:
            return json.loads(AESGCM(key).decrypt(nonce, sealed[14 + klen :], kid))
        except InvalidTag as exc:
            raise AuthenticationError(
                "sealed secret failed authentication (wrong master key or tampering)"
            ) from exc

    def _reload(self) -> None:
        assert self._path is not None
        fresh = SecretBox.load_or_create(self._path)
        self._keys, self._current = fresh._keys, fresh._current

    def rotate(self) -> str:
        """Add a new master key and make it current (old keys stay so existing values still open).

        Returns the new key id. Call ``retire_old_keys`` once every sealed value is re-sealed.
        """
        if self._path is None:
            raise ConfigurationError("this secret box has no key file to rotate")
        key_id = pysecrets.token_hex(4)
        self._keys[key_id] = AESGCM.generate_key(bit_length=256)
        self._current = key_id
        self._write()
        return key_id

    def retire_old_keys(self) -> list[str]:
        """Forget every key but the current one (after re-sealing); returns the retired ids."""
        retired = [k for k in self._keys if k != self._current]
        self._keys = {self._current: self._keys[self._current]}
        self._write()
        return retired

    def _write(self) -> None:
        """Atomic replace of the key file (0600), so a crash never leaves a half-written key."""
        assert self._path is not None
        data = {"current": self._current, "keys": {k: v.hex() for k, v in self._keys.items()}}
        tmp = self._path.with_name(f"{self._path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path)
