"""Restore-point manifests (``snapshots/<id>``): who, when, what, and the root tree.

A manifest is written last, after every pack and index file it depends on is stored, so its
existence is the commit point of a backup.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cloudkeep.repo.crypto import Crypter

SNAPSHOT_PREFIX = "snapshots/"
_AAD = b"cloudkeep-snapshot-v1"


@dataclass
class Snapshot:
    """A restore point. ``kind`` is ``"files"`` or ``"volume"``; ``stats`` holds the backup's figures."""

    id: str
    time: datetime
    hostname: str
    tags: list[str]
    paths: list[str]
    kind: str
    stats: dict[str, Any] = field(default_factory=dict)
    tree: str = ""
    retain_until: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
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
        until = data.get("retain_until")
        return cls(
            id=snapshot_id,
            time=datetime.fromisoformat(data["time"]),
            hostname=data["hostname"],
            tags=list(data.get("tags", [])),
            paths=list(data.get("paths", [])),
            kind=data.get("kind", "files"),
            stats=dict(data.get("stats", {})),
            tree=data["tree"],
            retain_until=datetime.fromisoformat(until) if until else None,
        )


def new_snapshot_id() -> str:
    return secrets.token_hex(16)


def encode_snapshot(crypter: Crypter, snapshot: Snapshot) -> bytes:
    return crypter.encode(json.dumps(snapshot.to_json()).encode(), _AAD)


def decode_snapshot(crypter: Crypter, snapshot_id: str, data: bytes) -> Snapshot:
    return Snapshot.from_json(snapshot_id, json.loads(crypter.decode(data, _AAD, f"snapshot {snapshot_id}")))
