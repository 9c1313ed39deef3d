"""The signed bundle manifest: which files make up an installer bundle, their SHA-256, who signed it.

The manifest is the one thing a machine must trust; everything else is checked against it. The
signature is Ed25519 (the server's signing key) over the canonical JSON of every field except
``signature``. The same canonical form is re-implemented in a few lines inside ``install.sh``
and ``install.ps1`` (they cannot import this package before it is verified), so keep it simple:
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, Field

from cloudkeep.errors import AuthenticationError, IntegrityError

MANIFEST_NAME = "manifest.json"
ARCHIVES_NAME = "archives.json"
FORMAT_VERSION = 1


class FileEntry(BaseModel):
    sha256: str
    size: int


class PlatformEntry(BaseModel):
    installer: str  # the script that installs this platform (install.sh / install.ps1)
    files: list[str]  # every file the platform needs, installer included


class ArchiveEntry(BaseModel):
    """A per-platform archive (manifest + the platform's files): one download per machine."""

    file: str
    sha256: str
    size: int


class BundleManifest(BaseModel):
    """A built bundle.

    ``archives`` is the server-side index, not signed: it hashes files that contain the manifest.
    """

    format: int = FORMAT_VERSION
    version: str
    built_at: str
    python_requires: str = ">=3.9"
    files: dict[str, FileEntry]
    platforms: dict[str, PlatformEntry]
    signer: str = ""  # base64 raw Ed25519 public key
    signature: str = ""
    archives: dict[str, ArchiveEntry] = Field(default_factory=dict, exclude=True)

    def signed_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude={"signature", "archives"})

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.signed_fields())

    def sign(self, key: Ed25519PrivateKey) -> None:
        self.signer = public_key_b64(key)
        self.signature = base64.b64encode(key.sign(self.canonical_bytes())).decode()

    def verify_signature(self, public_key_b64_text: str) -> None:
        """Raise AuthenticationError unless signed by ``public_key_b64_text`` (the server's key)."""
        try:
            public = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64_text))
            public.verify(base64.b64decode(self.signature), self.canonical_bytes())
        except (InvalidSignature, ValueError) as exc:
            raise AuthenticationError(
                f"bundle {self.version}: manifest signature is invalid for the server key",
                hint="the bundle was tampered with or signed by another server; "
                "rebuild it with `cloudkeep bundle build`",
            ) from exc

    def verify_files(self, folder: Path, platform: str | None = None) -> None:
        """Check size and SHA-256 of every file (of ``platform``, or all) in ``folder``."""
        names = self.platforms[platform].files if platform else list(self.files)
        for name in names:
            entry = self.files[name]
            path = folder / name
            if not path.is_file():
                raise IntegrityError(f"bundle {self.version}: {name} is missing from {folder}")
            digest = sha256_file(path)
            if digest != entry.sha256:
                raise IntegrityError(
                    f"bundle {self.version}: checksum mismatch for {name} "
                    f"(expected {entry.sha256}, got {digest})",
                    hint="the file was tampered with or truncated; download the bundle again",
                )

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, folder: Path) -> BundleManifest:
        """Read ``manifest.json`` (and the server-side ``archives.json`` when present) from ``folder``."""
        manifest = cls.model_validate_json((folder / MANIFEST_NAME).read_text())
        archives = folder / ARCHIVES_NAME
        if archives.is_file():
            manifest.archives = {
                k: ArchiveEntry.model_validate(v) for k, v in json.loads(archives.read_text()).items()
            }
        return manifest


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
