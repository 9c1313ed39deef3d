"""What a repository is in its store: the layout, the sealed format config, writer namespaces.

Storage layout (see docs/format.md)::

    config                    sealed JSON: repository id, chunker parameters, pack size, compression
    keys/<id>                 master key wrapped by one password (scrypt + AES-GCM)
    confidential              format 3: private and shared keys, sealed under the master key
    data/<id[:2]>/<id>        packs of encrypted blobs
    index/<id>                which pack holds which blob (one or more files per backup session)
    snapshots/<id>            restore-point manifests; written last = the commit point
    sessions/<id>             "backup in progress" markers that prune respects
    prune/<id>                packs marked for deletion by prune's first phase
    writers/<name>/...        a writer's own namespace (data/, index/, snapshots/, sessions/ as above)
                              when it was opened with ``writer_prefix``; readers merge every namespace
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cloudkeep.errors import ConfigurationError, IntegrityError
from cloudkeep.repo.chunker import ChunkerParams
from cloudkeep.repo.crypto import Crypter, MasterKey

CONFIG_KEY = "config"
SESSIONS_PREFIX = "sessions/"
PRUNE_PREFIX = "prune/"
WRITERS_PREFIX = "writers/"
CONFIG_AAD = b"cloudkeep-config-v1"
MARKER_AAD = b"cloudkeep-marker-v1"
# 2: restore-point manifests are content-addressed (version 1 manifests are refused); 1 still opens.
# 3: confidentiality between writers (per-pack data keys wrapped to a public key; repo/confidential.py),
#    by `Repository.create(version=3)` or `repo.migrate`. New repositories stay at 2 until the server
#    sends machines writer bundles instead of the password (until then format 3 protects nothing).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2, 3)
CONTENT_ADDRESSED_MANIFESTS = 2  # the first format whose repositories hold only version 2 manifests
# A new repository's pack target (its config keeps it). 16 MiB, not 32: the open data pack goes up
# only when full or at the end, so an incremental adding 20 MiB uploaded all of it after its walk
# (0.3-0.4 s on the critical path on S3); at 16 MiB most of it goes up during the walk. 1 TiB is
# still only ~64 k objects (restic's default is 16 MiB too).
DEFAULT_PACK_SIZE = 16 * 2**20


@dataclass(frozen=True)
class RepoConfig:
    id: str
    chunker: ChunkerParams
    pack_size: int
    compression_level: int
    version: int = FORMAT_VERSION
    origin: int = 0  # the format the repository was created at, if it was migrated since (0: none)

    @property
    def created_version(self) -> int:
        return self.origin or self.version

    def migrated(self, version: int) -> RepoConfig:
        return RepoConfig(
            self.id, self.chunker, self.pack_size, self.compression_level, version, self.created_version
        )

    def to_json(self) -> dict[str, Any]:
        body = {
            "version": self.version,
            "id": self.id,
            "chunker": self.chunker.to_json(),
            "pack_size": self.pack_size,
            "compression_level": self.compression_level,
        }
        if self.origin and self.origin != self.version:
            body["origin"] = self.origin
        return body

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RepoConfig:
        if data.get("version") not in READABLE_VERSIONS:
            raise IntegrityError(f"unsupported repository format version {data.get('version')}")
        return cls(
            data["id"],
            ChunkerParams.from_json(data["chunker"]),
            data["pack_size"],
            data["compression_level"],
            data["version"],
            int(data.get("origin", 0)),
        )


def seal_config(master: MasterKey, config: RepoConfig) -> bytes:
    """The ``config`` object's bytes: the format config, encrypted under the master key."""
    return Crypter(master).encode(json.dumps(config.to_json()).encode(), CONFIG_AAD)


def open_config(master: MasterKey, sealed: bytes) -> RepoConfig:
    return RepoConfig.from_json(json.loads(Crypter(master).decode(sealed, CONFIG_AAD, "config")))


def check_writer_prefix(prefix: str | None) -> str:
    """``writers/<name>/`` (one segment, trailing slash), or "" for the root layout."""
    if not prefix:
        return ""
    name = prefix[len(WRITERS_PREFIX) : -1]
    if not prefix.startswith(WRITERS_PREFIX) or not prefix.endswith("/") or not name or "/" in name:
        raise ConfigurationError(
            f"writer prefix {prefix!r} is not of the form 'writers/<name>/'",
            hint="pass e.g. writers/<machine id>/ (one path segment, trailing slash)",
        )
    return prefix


def writer_namespace(name: str) -> str:
    """The namespace of writer ``name`` (a machine id): ``writers/<name>/``."""
    return check_writer_prefix(f"{WRITERS_PREFIX}{name}/")
