"""Restore-point manifests (``snapshots/<id>``): who, when, what, and the root tree.

A manifest is written last, after every pack and index file it depends on is stored, so its
existence is the commit point of a backup.

A manifest's id is bound to its content (version 2): the id is the keyed BLAKE3 content id of
the manifest's plaintext (which holds a random nonce, so ids stay unique) and the manifest is
sealed with that id in its associated data. Every read checks both, so a manifest copied or
moved under another id, or one whose bytes were replaced, fails with an ``IntegrityError`` that
names its key. Manifests written before (version 1: random 32-hex ids, constant associated data)
are still read where the repository allows them; nothing binds their id to their content.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cloudkeep.errors import IntegrityError
from cloudkeep.repo.crypto import Crypter

SNAPSHOT_PREFIX = "snapshots/"
MANIFEST_VERSION = 2
LEGACY_MANIFEST_VERSION = 1
_AAD = b"cloudkeep-snapshot-v2:"  # + the manifest's id
_LEGACY_AAD = b"cloudkeep-snapshot-v1"
_CONTENT_ID = re.compile(r"[0-9a-f]{64}")
_LEGACY_ID = re.compile(r"[0-9a-f]{32}")
_KINDS = ("files", "volume")


@dataclass
class Snapshot:
    """A restore point. ``kind`` is ``"files"`` or ``"volume"``; ``stats`` holds the backup's figures.

    ``id`` is assigned by ``Repository.save_snapshot`` (the content id of the sealed manifest);
    ``digest`` is the keyed hash of the manifest's plaintext as read (equal to ``id`` from
    version 2), what the server's catalog pins at backup time.
    """

    id: str
    time: datetime
    hostname: str
    tags: list[str]
    paths: list[str]
    kind: str
    stats: dict[str, Any] = field(default_factory=dict)
    tree: str = ""
    retain_until: datetime | None = None
    nonce: str = ""
    version: int = MANIFEST_VERSION
    digest: str = ""

    @property
    def legacy(self) -> bool:
        """A version 1 manifest: its id is random, not bound to its content."""
        return self.version < MANIFEST_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "nonce": self.nonce,
            "time": self.time.isoformat(),
            "hostname": self.hostname,
            "tags": self.tags,
            "paths": self.paths,
            "kind": self.kind,
            "stats": self.stats,
            "tree": self.tree,
            "retain_until": self.retain_until.isoformat() if self.retain_until else None,
        }

    @classmethod
    def from_json(cls, snapshot_id: str, data: dict[str, Any]) -> Snapshot:
        """Validate a decoded manifest; ``ValueError``/``TypeError``/``KeyError`` when malformed."""
        until = data.get("retain_until")
        tree = data["tree"]
        if not isinstance(tree, str) or not _CONTENT_ID.fullmatch(tree):
            raise ValueError(f"root tree {tree!r} is not a tree id")
        kind = data.get("kind", "files")
        if kind not in _KINDS:
            raise ValueError(f"kind {kind!r} is not one of {', '.join(_KINDS)}")
        return cls(
            id=snapshot_id,
            time=datetime.fromisoformat(data["time"]),
            hostname=_text(data["hostname"], "hostname"),
            tags=[_text(t, "tag") for t in data.get("tags", [])],
            paths=[_text(p, "path") for p in data.get("paths", [])],
            kind=kind,
            stats=dict(data.get("stats", {})),
            tree=tree,
            retain_until=datetime.fromisoformat(until) if until else None,
            nonce=_text(data.get("nonce", ""), "nonce"),
            version=int(data.get("version", LEGACY_MANIFEST_VERSION)),
        )


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} {value!r} is not text")
    return value


def new_snapshot_id() -> str:
    """A placeholder: ``Repository.save_snapshot`` gives the manifest its content id."""
    return ""


def is_snapshot_id(name: str) -> bool:
    """Whether ``name`` has the shape of a restore-point id (content id, or a legacy random id)."""
    return bool(_CONTENT_ID.fullmatch(name) or _LEGACY_ID.fullmatch(name))


def seal_snapshot(crypter: Crypter, snapshot: Snapshot) -> tuple[str, bytes]:
    """A new (version 2) manifest: its content id and its sealed bytes, bound to each other."""
    if not snapshot.nonce:
        snapshot.nonce = secrets.token_hex(16)
    plain = json.dumps(snapshot.to_json(), sort_keys=True).encode()
    snapshot_id = crypter.content_id(plain).hex()
    return snapshot_id, crypter.encode(plain, _AAD + snapshot_id.encode())


def open_snapshot(crypter: Crypter, key: str, data: bytes, *, allow_legacy: bool = True) -> Snapshot:
    """Open the manifest stored under ``key`` and prove it belongs there; ``IntegrityError`` if not.

    The id is the key's last segment. A content id must match both the associated data and the
    hash of the plaintext; a legacy (32-hex) id is accepted only when ``allow_legacy``.
    """
    snapshot_id = key.rsplit("/", 1)[-1]
    what = f"restore point manifest {key}"
    hint = "run `cloudkeep repository check`; restore from another restore point"
    if _CONTENT_ID.fullmatch(snapshot_id):
        version = MANIFEST_VERSION
        try:
            plain = crypter.decode(data, _AAD + snapshot_id.encode(), what)
        except IntegrityError as exc:
            raise IntegrityError(
                f"{exc.message} — or it is another restore point's manifest moved under this id", hint=hint
            ) from None
        digest = crypter.content_id(plain).hex()
        if not hmac.compare_digest(digest, snapshot_id):
            raise IntegrityError(f"{what}: content does not match its id", hint=hint)
    elif _LEGACY_ID.fullmatch(snapshot_id):
        if not allow_legacy:
            raise IntegrityError(
                f"{what}: a version 1 manifest (id not bound to content) in a repository created "
                "with content-addressed manifests; cloudkeep did not write it",
                hint=hint,
            )
        version = LEGACY_MANIFEST_VERSION
        plain = crypter.decode(data, _LEGACY_AAD, what)
        digest = crypter.content_id(plain).hex()
    else:
        raise IntegrityError(f"{what}: {snapshot_id!r} is not a restore point id", hint=hint)
    try:
        body = json.loads(plain)
        if not isinstance(body, dict):
            raise TypeError("not a JSON object")
        if body.get("version", LEGACY_MANIFEST_VERSION) != version:
            raise ValueError(f"version {body.get('version')!r} where {version} belongs")
        snapshot = Snapshot.from_json(snapshot_id, body)
    except (ValueError, TypeError, KeyError) as exc:
        raise IntegrityError(f"{what}: malformed ({exc})", hint=hint) from None
    snapshot.digest = digest
    return snapshot
