"""Format 3: confidentiality between writers (issue 19; docs/format.md, "Confidentiality between machines").

Agents get a *writer bundle* instead of the repository password: the MAC key for content ids
(dedup), a shared key for index files and markers (which hold no names or contents), the
repository's X25519 public key and the format config. Every pack is sealed under a fresh random
data key and every manifest under a fresh content key, each wrapped to the public key
(X25519 + HKDF-SHA256 + AES-256-GCM); only the private key, which stays with the server (sealed
in the repository's ``confidential`` object under the master key), unwraps them. For a restore
the server sends the machine exactly the keys it needs (``KeyRing.grant``).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cloudkeep.errors import ConfigurationError, IntegrityError, NotFoundError, PermissionDeniedError
from cloudkeep.repo.crypto import NONCE_SIZE, TAG_SIZE, Crypter, MasterKey, b64, unb64
from cloudkeep.repo.layout import CONFIG_KEY, open_config
from cloudkeep.repo.pack import pack_key
from cloudkeep.repo.snapshot import Snapshot, open_snapshot, seal_snapshot
from cloudkeep.storage.base import ObjectNotFoundError, ObjectStore

CONFIDENTIAL_FORMAT = 3  # the first format with per-pack data keys
CONFIDENTIAL_KEY = "confidential"  # the sealed private and shared keys (root, full access only)
_CONFIDENTIAL_AAD = b"cloudkeep-confidential-v3"
KEY_SIZE = 32
WRAPPED_SIZE = KEY_SIZE + NONCE_SIZE + KEY_SIZE + TAG_SIZE  # ephemeral public key, nonce, sealed key: 92
# 16-byte magics: a format 2 pack or manifest starts with a random nonce, so it matches by chance
# with probability 2^-128 (a 4-byte magic would misread one legacy pack in 4 billion).
PACK_MAGIC = b"CLOUDKEEP-PACK-3"
MANIFEST_MAGIC = b"CLOUDKEEP-SNAP-3"
PACK_PRELUDE_SIZE = len(PACK_MAGIC) + WRAPPED_SIZE


def _context(kind: str, repo_id: str, name: str = "") -> bytes:
    """What a wrapped key is for: HKDF info and AAD, so a key wrapped for one use opens no other."""
    return f"cloudkeep-v3-{kind}-key:{repo_id}:{name}".encode()


def generate_private_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key_of(private_key: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def _kek(shared: bytes, ephemeral: bytes, recipient: bytes, context: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=SHA256(), length=KEY_SIZE, salt=ephemeral + recipient, info=context)
    return AESGCM(hkdf.derive(shared))


def wrap_key(public_key: bytes, content_key: bytes, context: bytes) -> bytes:
    """``ephemeral X25519 public ‖ nonce ‖ AES-GCM(KEK, content key)``: only the private key opens it."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public_key))
    nonce = os.urandom(NONCE_SIZE)
    sealed = _kek(shared, ephemeral_public, public_key, context).encrypt(nonce, content_key, context)
    return ephemeral_public + nonce + sealed


def unwrap_key(private_key: bytes, wrapped: bytes, context: bytes, what: str) -> bytes:
    """The content key; ``IntegrityError`` if ``wrapped`` was altered or wrapped for something else."""
    if len(wrapped) != WRAPPED_SIZE:
        raise IntegrityError(f"{what}: wrapped key has {len(wrapped)} bytes, not {WRAPPED_SIZE}")
    ephemeral_public = wrapped[:KEY_SIZE]
    nonce, sealed = wrapped[KEY_SIZE : KEY_SIZE + NONCE_SIZE], wrapped[KEY_SIZE + NONCE_SIZE :]
    private = X25519PrivateKey.from_private_bytes(private_key)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
        kek = _kek(shared, ephemeral_public, public_key_of(private_key), context)
        return kek.decrypt(nonce, sealed, context)
    except (InvalidTag, ValueError):  # ValueError: a low-order ephemeral point
        raise IntegrityError(
            f"{what}: its wrapped key does not open (tampered with, or wrapped for another repository)",
            hint="run `cloudkeep repository check` to see which restore points are affected",
        ) from None


@dataclass(frozen=True)
class ConfidentialKeys:
    """Format 3 key material. ``private_key`` is ``None`` on a machine (it holds a writer bundle)."""

    shared_key: bytes  # seals index files and session/prune markers: every writer reads them
    public_key: bytes
    private_key: bytes | None = None

    @classmethod
    def generate(cls) -> ConfidentialKeys:
        private = generate_private_key()
        return cls(secrets.token_bytes(KEY_SIZE), public_key_of(private), private)

    def seal(self, master: MasterKey) -> bytes:
        """The ``confidential`` object: both secrets, sealed under the master key (password holders only)."""
        assert self.private_key is not None
        body = {"shared_key": b64(self.shared_key), "private_key": b64(self.private_key)}
        return Crypter(master).encode(json.dumps(body).encode(), _CONFIDENTIAL_AAD)

    @classmethod
    def open(cls, master: MasterKey, sealed: bytes) -> ConfidentialKeys:
        body = json.loads(Crypter(master).decode(sealed, _CONFIDENTIAL_AAD, CONFIDENTIAL_KEY))
        try:
            private = unb64(body["private_key"])
            return cls(unb64(body["shared_key"]), public_key_of(private), private)
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{CONFIDENTIAL_KEY}: malformed ({exc})") from None


def open_confidential(store: ObjectStore, master: MasterKey, sealed: bytes | None = None) -> ConfidentialKeys:
    """A format 3 repository's key material, from its ``confidential`` object (``sealed``: already
    fetched; ``None`` fetches it)."""
    try:
        return ConfidentialKeys.open(master, sealed if sealed is not None else store.get(CONFIDENTIAL_KEY))
    except ObjectNotFoundError:
        raise IntegrityError(
            f"{store.describe()}: format 3 repository without its key material ({CONFIDENTIAL_KEY})",
            hint="restore that object from a copy; without it new packs cannot be read",
        ) from None


def manifest_reader(store: ObjectStore, master: MasterKey) -> Callable[[str], Snapshot]:
    """Reads manifests (any version, any format) by key without loading the index: the server's
    check of a machine's report. Format 3 manifests are opened with the private key."""
    try:
        config = open_config(master, store.get(CONFIG_KEY))
    except ObjectNotFoundError:
        raise NotFoundError(f"{store.describe()}: repository config is missing") from None
    keys = open_confidential(store, master) if config.version >= CONFIDENTIAL_FORMAT else None
    ring = KeyRing(config.id, config.compression_level, master, master.id_key, keys)
    return lambda key: ring.open_manifest(key, store.get(key), allow_legacy=True)


@dataclass(frozen=True)
class WriterBundle:
    """What a machine holds for a format 3 repository: enough to back up and dedup, nothing to decrypt.

    Sent by the server sealed like repository access today (``to_json``/``from_json``).
    """

    config: dict[str, Any]  # RepoConfig.to_json(): id, chunker (incl. seed), pack size, level
    id_key: bytes
    shared_key: bytes
    public_key: bytes
    # Verifies the server's vouched files (repo/vouch.py); empty from a server older than them.
    vouch_key: bytes = b""
    # Authenticates this writer's own index files (repo/writermac.py): the bundle is per writer.
    # Empty from a server older than writer keys: the machine then trusts its namespace as before.
    writer_key: bytes = b""

    def to_json(self) -> dict[str, Any]:
        body = {
            "format": CONFIDENTIAL_FORMAT,
            "config": self.config,
            "id_key": b64(self.id_key),
            "shared_key": b64(self.shared_key),
            "public_key": b64(self.public_key),
        }
        if self.vouch_key:
            body["vouch_key"] = b64(self.vouch_key)
        if self.writer_key:
            body["writer_key"] = b64(self.writer_key)
        return body

    @classmethod
    def from_json(cls, data: Any) -> WriterBundle:
        """Validated whole: a bundle is a message from outside, so a bad one is a clear error."""
        try:
            if not isinstance(data, dict) or data.get("format") != CONFIDENTIAL_FORMAT:
                raise ValueError("not a format 3 writer bundle")
            keys = [unb64(str(data[name])) for name in ("id_key", "shared_key", "public_key")]
            if any(len(key) != KEY_SIZE for key in keys) or not isinstance(data["config"], dict):
                raise ValueError("wrong key sizes or config")
            vouch_key = unb64(str(data["vouch_key"])) if "vouch_key" in data else b""
            if vouch_key and len(vouch_key) != KEY_SIZE:
                raise ValueError("wrong vouch key size")
            writer_key = unb64(str(data["writer_key"])) if "writer_key" in data else b""
            if writer_key and len(writer_key) != KEY_SIZE:
                raise ValueError("wrong writer key size")
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"malformed writer bundle ({exc})", hint="ask the server for a new one"
            ) from None
        return cls(data["config"], keys[0], keys[1], keys[2], vouch_key, writer_key)


@dataclass(frozen=True)
class PackSealer:
    """The crypter for one pack's blobs and header, and the prelude that carries its wrapped data key."""

    crypter: Crypter
    prelude: bytes


class KeyRing:
    """Which key opens what in one opened repository, by format and by what the holder was given.

    Formats 1-2: one master key for everything. Format 3: ``shared`` for index files and markers;
    a data key per pack and a content key per manifest, from the private key (server) or from
    keys the server granted (a machine's restore); ``legacy`` (the master key, password holders
    only) for objects written before the repository was migrated.
    """

    def __init__(
        self, repo_id: str, level: int, master: MasterKey | None, id_key: bytes, keys: ConfidentialKeys | None
    ) -> None:
        self.repo_id = repo_id
        self.keys = keys
        self.legacy = Crypter(master, level) if master is not None else None
        if keys is None:
            assert self.legacy is not None
            self.shared = self.legacy
        else:
            self.shared = Crypter(MasterKey(keys.shared_key, id_key), level)
        self._v2_sealer = PackSealer(self.shared, b"")
        self._grants: dict[str, bytes] = {}  # object key → content key, sent by the server
        # Data keys are 32 bytes a pack (1 MiB for a 1 TiB repository); crypters only for recent
        # packs. ``None``: a pack written before format 3, opened with the repository key.
        self._data_keys: dict[str, bytes | None] = {}
        self._crypters: OrderedDict[str, Crypter] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def confidential(self) -> bool:
        return self.keys is not None

    @property
    def private_key(self) -> bytes | None:
        return self.keys.private_key if self.keys is not None else None

    def grant(self, grants: Mapping[str, bytes]) -> None:
        """Keys the server unwrapped for this machine: object key (pack or manifest) → content key."""
        with self._lock:
            self._grants.update(grants)

    def granted(self, pack_id: str) -> bool | None:
        """Whether the server sent this pack's key; ``None`` where grants do not apply (no
        restore keys received, or the private key opens everything)."""
        if not self._grants:  # no restore keys: the common case, without the lock (grants only grow)
            return None
        with self._lock:
            if self.private_key is not None:
                return None
            return pack_key(pack_id) in self._grants

    def new_pack_sealer(self) -> PackSealer:
        """A fresh data key for the next pack (format 3), or the master key's sealer (formats 1-2)."""
        if self.keys is None:
            return self._v2_sealer
        data_key = secrets.token_bytes(KEY_SIZE)
        wrapped = wrap_key(self.keys.public_key, data_key, _context("pack", self.repo_id))
        return PackSealer(self.shared.with_encryption_key(data_key), PACK_MAGIC + wrapped)

    def pack_data_key(self, pack_id: str, prelude: Callable[[], bytes]) -> bytes | None:
        """The data key of a format 3 pack (``None`` for an older pack); needs the private key."""
        if self.private_key is None:
            raise PermissionDeniedError(f"pack {pack_id}: only the server can unwrap its data key")
        head = prelude()
        if not head.startswith(PACK_MAGIC):
            return None
        wrapped = head[len(PACK_MAGIC) : PACK_PRELUDE_SIZE]
        return unwrap_key(self.private_key, wrapped, _context("pack", self.repo_id), f"pack {pack_id}")

    def pack_crypter(self, pack_id: str, prelude: Callable[[], bytes]) -> Crypter:
        """The crypter for a pack's blobs and header; ``prelude`` returns its first bytes if needed."""
        if self.keys is None:
            return self.shared
        with self._lock:
            cached = self._crypters.get(pack_id)
            if cached is not None:
                self._crypters.move_to_end(pack_id)
                return cached
            known = pack_id in self._data_keys
            data_key = self._data_keys.get(pack_id) or self._grants.get(pack_key(pack_id))
        if data_key is None and not known:
            if self.private_key is None:
                raise PermissionDeniedError(
                    f"pack {pack_id}: this machine holds no key for it (format 3 keeps other writers' "
                    "data confidential)",
                    hint="restore through the server, which sends the keys of exactly the packs a restore "
                    "needs",
                )
            data_key = self.pack_data_key(pack_id, prelude)
            with self._lock:
                self._data_keys[pack_id] = data_key
        if data_key is None:  # written before the migration: the repository key opens it
            assert self.legacy is not None
            return self.legacy
        crypter = self.shared.with_encryption_key(data_key)
        with self._lock:
            self._crypters[pack_id] = crypter
            while len(self._crypters) > 256:
                self._crypters.popitem(last=False)
        return crypter

    def seal_manifest(self, snapshot: Snapshot) -> tuple[str, bytes]:
        """``(id, bytes)``; format 3 seals under a content key wrapped to the public key."""
        if self.keys is None:
            return seal_snapshot(self.shared, snapshot)
        content_key = secrets.token_bytes(KEY_SIZE)
        snapshot_id, sealed = seal_snapshot(self.shared.with_encryption_key(content_key), snapshot)
        wrapped = wrap_key(self.keys.public_key, content_key, _context("manifest", self.repo_id, snapshot_id))
        return snapshot_id, MANIFEST_MAGIC + wrapped + sealed

    def manifest_content_key(self, key: str, data: bytes) -> bytes | None:
        """The content key of a format 3 manifest (``None`` for an older one): granted or unwrapped."""
        if not data.startswith(MANIFEST_MAGIC):
            return None
        with self._lock:
            granted = self._grants.get(key)
        if granted is not None:
            return granted
        if self.private_key is None:
            raise PermissionDeniedError(
                f"restore point {key}: this machine holds no key for it",
                hint="restore points of a format 3 repository are read by the server",
            )
        wrapped = data[len(MANIFEST_MAGIC) : len(MANIFEST_MAGIC) + WRAPPED_SIZE]
        snapshot_id = key.rsplit("/", 1)[-1]
        return unwrap_key(
            self.private_key, wrapped, _context("manifest", self.repo_id, snapshot_id), f"restore point {key}"
        )

    def open_manifest(self, key: str, data: bytes, *, allow_legacy: bool) -> Snapshot:
        content_key = self.manifest_content_key(key, data) if self.keys is not None else None
        if content_key is not None:
            body = data[len(MANIFEST_MAGIC) + WRAPPED_SIZE :]
            return open_snapshot(self.shared.with_encryption_key(content_key), key, body, allow_legacy=False)
        if self.legacy is None:
            raise PermissionDeniedError(
                f"restore point {key} was written before format 3: only the repository key opens it"
            )
        return open_snapshot(self.legacy, key, data, allow_legacy=allow_legacy)

    def open_shared(self, data: bytes, aad: bytes, what: str) -> bytes:
        """An index file or marker: the shared key, or the master key for one written before migration."""
        try:
            return self.shared.decode(data, aad, what)
        except IntegrityError:
            if self.legacy is None or self.legacy is self.shared:
                raise
            return self.legacy.decode(data, aad, what)

    def shared_crypters(self) -> list[Crypter]:
        """Crypters that may open an index file, newest first."""
        if self.legacy is None or self.legacy is self.shared:
            return [self.shared]
        return [self.shared, self.legacy]
