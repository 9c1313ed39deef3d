"""Server-vouched index files: machines deduplicate only against packs the server has read (issue 19).

Agents hold the MAC key (cross-machine dedup needs it), so a compromised machine can index a chunk
id it guesses in a pack of its own that holds other bytes. On a format 3 repository a machine
(writer prefix) therefore reuses only entries from its own namespace's index files and from
**vouched** files: after each job the server reads every pack not yet vouched once, opens every
blob its header lists and checks the blob's id (the MAC of its plaintext), and writes
``vouched/<random>`` listing the packs whose blobs all verified — with exactly the entries it
verified, so no index file's claim about a pack matters.

A vouched file is an index file (same records, sealed under the shared key with its own AAD)
followed by an Ed25519 signature. The signing key is derived from the repository's X25519
private key, which never leaves the server; machines receive the public half in their writer
bundle. So an agent that can create any name (Azure's flat namespace) still cannot forge one: a
file whose signature does not verify is ignored with a warning (docs/format.md, "Vouched packs").
Idempotent and crash-safe: nothing is vouched until its file is stored whole (create-only), and a
run that dies first is simply done again by the next one.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cloudkeep.compat import zip_strict
from cloudkeep.errors import IntegrityError, PermissionDeniedError
from cloudkeep.repo.crypto import Crypter
from cloudkeep.repo.index import RawEntry, encode_index_file, read_index_file
from cloudkeep.repo.pack import BLOB_TYPES, BlobEntry, pack_id_of, pack_key, read_header
from cloudkeep.repo.steps import step
from cloudkeep.repo.writermac import forged
from cloudkeep.storage.base import ObjectNotFoundError, ObjectStore

if TYPE_CHECKING:
    from cloudkeep.repo.repository import Repository

log = logging.getLogger(__name__)

VOUCH_PREFIX = "vouched/"
SIGNATURE_SIZE = 64
_AAD = b"cloudkeep-vouched-v1"
CONSOLIDATE_AT = 16  # vouched files: machines read them all at every open
VouchedPack = tuple[str, Iterable[RawEntry], Optional[int]]  # pack id, its rows, its write time


def _signing_key(private_key: bytes, repo_id: str) -> Ed25519PrivateKey:
    """Derived, not stored: whoever holds the X25519 private key (the server) can sign, nobody else."""
    hkdf = HKDF(algorithm=SHA256(), length=32, salt=None, info=f"cloudkeep-v3-vouch-key:{repo_id}".encode())
    return Ed25519PrivateKey.from_private_bytes(hkdf.derive(private_key))


def vouch_public_key(private_key: bytes, repo_id: str) -> bytes:
    """What machines verify vouched files with (sent in their writer bundle)."""
    return _signing_key(private_key, repo_id).public_key().public_bytes_raw()


def _signed_message(repo_id: str, sealed: bytes) -> bytes:
    return _AAD + b":" + repo_id.encode() + b"\0" + sealed


def seal_vouched(
    crypter: Crypter,
    private_key: bytes,
    repo_id: str,
    packs: dict[str, list[BlobEntry]],
    written: dict[str, int],
) -> bytes:
    # The index records under this file kind's own AAD: an index file copied here does not open.
    sealed = encode_index_file(crypter, packs, written, aad=_AAD)
    return sealed + _signing_key(private_key, repo_id).sign(_signed_message(repo_id, sealed))


def open_vouched(
    crypter: Crypter, public_key: bytes, repo_id: str, key: str, data: bytes, written: dict[str, int]
) -> list[tuple[str, Iterable[RawEntry]]]:
    """The packs a vouched file lists; ``IntegrityError`` if the server did not sign it."""
    sealed, signature = data[:-SIGNATURE_SIZE], data[-SIGNATURE_SIZE:]
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, _signed_message(repo_id, sealed))
    except (InvalidSignature, ValueError):
        raise IntegrityError(f"vouched file {key}: not signed by the server") from None
    return read_index_file(crypter, key, sealed, written, aad=_AAD)


def read_vouched(
    store: ObjectStore, crypter: Crypter, public_key: bytes | None, repo_id: str, threads: int = 8
) -> tuple[list[VouchedPack], dict[str, str]]:
    """Every pack the server vouched for, and the files under ``vouched/`` that are not its (key → why).

    Without the server's public key (a bundle from an older server) nothing is trusted.
    """
    packs, refused, _ = _read_vouched(store, crypter, public_key, repo_id, threads)
    return packs, refused


def _read_vouched(
    store: ObjectStore, crypter: Crypter, public_key: bytes | None, repo_id: str, threads: int
) -> tuple[list[VouchedPack], dict[str, str], list[str]]:
    """Also the keys read. A listed file that vanished was replaced by a consolidated one written
    before it was deleted (``vouch_new_packs``): a new listing finds that one."""
    for _ in range(5):
        found = _read_once(store, crypter, public_key, repo_id, threads)
        if found is not None:
            return found
    return [], {}, []  # kept changing: trust nothing this time (dedup is lost, never data)


def _read_once(
    store: ObjectStore, crypter: Crypter, public_key: bytes | None, repo_id: str, threads: int
) -> tuple[list[VouchedPack], dict[str, str], list[str]] | None:
    keys = [info.key for info in store.list(VOUCH_PREFIX)]
    packs: list[VouchedPack] = []
    refused: dict[str, str] = {}

    def fetch(key: str) -> bytes | None:
        try:
            return store.get(key)
        except ObjectNotFoundError:
            return None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for key, data in zip_strict(keys, pool.map(fetch, keys)):
            if data is None:
                return None
            written: dict[str, int] = {}
            try:
                if public_key is None:
                    raise IntegrityError(f"vouched file {key}: no key to verify it (writer bundle too old)")
                listed = open_vouched(crypter, public_key, repo_id, key, data, written)
            except IntegrityError as exc:
                refused[key] = exc.message
                log.warning("ignoring %s", exc.message)
                continue
            packs.extend((pack_id, rows, written.get(pack_id)) for pack_id, rows in listed)
    return packs, refused, keys


@dataclass
class VouchResult:
    vouched: list[str] = field(default_factory=list)  # packs whose every blob verified
    refused: dict[str, str] = field(default_factory=dict)  # pack id → why (names its writer)
    bytes_read: int = 0
    key: str | None = None  # the vouched file written, if any
    # Writer-namespace index files whose writer MAC is wrong (repo/writermac.py): key → why. Flagged
    # only: vouched entries come from each pack's verified header, never from an index file.
    forged_index_files: dict[str, str] = field(default_factory=dict)

    @property
    def refused_writers(self) -> list[str]:
        return sorted({pack_id.rpartition("/")[0] + "/" for pack_id in self.refused if "/" in pack_id})


def vouched_packs(repo: Repository) -> set[str]:
    packs, _ = read_vouched(repo.store, repo.crypter, repo.vouch_key, repo.id, repo.io_threads)
    return {pack_id for pack_id, _, _ in packs}


def _verified_entries(repo: Repository, pack_id: str, body: bytes) -> list[BlobEntry]:
    """The pack's own header, every blob of it opened and checked against its id."""
    digest = pack_id.rpartition("/")[2]
    if pack_id_of(body) != digest:
        raise IntegrityError(f"pack {pack_id}: its content does not match its name")
    crypter = repo.pack_crypter(pack_id, body)
    entries = read_header(crypter, pack_id, body, len(body))
    for entry in entries:
        if entry.offset < 0 or entry.offset + entry.length > len(body):
            raise IntegrityError(f"pack {pack_id}: blob {entry.id.hex()} lies outside the pack")
        repo.decode_blob(entry, pack_id, memoryview(body)[entry.offset : entry.offset + entry.length])
    return entries


def vouch_new_packs(repo: Repository, writer_prefixes: Sequence[str] | None = None) -> VouchResult:
    """Read each indexed pack not yet vouched (of these writers; ``None``: every pack) once, and
    vouch for those whose blobs all verify in one new signed file. Needs the private key (server)."""
    private_key = repo.keyring.private_key
    if private_key is None or repo.master is None:
        raise PermissionDeniedError("only the server vouches for packs (format 3, with the repository key)")
    repo.load_index()
    result = VouchResult(forged_index_files=forged(repo.unauthenticated_index_files))
    for why in result.forged_index_files.values():
        log.warning("%s: another machine wrote it (compromised machine?)", why)
    listed, _, keys = _read_vouched(repo.store, repo.crypter, repo.vouch_key, repo.id, repo.io_threads)
    done: dict[str, list[BlobEntry]] = {}
    times: dict[str, int] = {}
    for pack_id, rows, when in listed:
        if pack_id in repo.index.packs and pack_id not in done:  # live: pruned packs drop out
            done[pack_id] = [BlobEntry(BLOB_TYPES[t], i, o, n, r) for t, i, o, n, r in rows]
            if when:
                times[pack_id] = when
    candidates = [
        pack_id
        for pack_id in repo.index.packs
        if pack_id not in done
        and (writer_prefixes is None or any(pack_id.startswith(p) for p in writer_prefixes))
    ]
    verified: dict[str, list[BlobEntry]] = {}
    for pack_id in candidates:  # one at a time: packs are up to 32 MiB each
        try:
            body = repo.store.get(pack_key(pack_id))
        except ObjectNotFoundError:
            continue  # pruned meanwhile
        result.bytes_read += len(body)
        try:
            verified[pack_id] = _verified_entries(repo, pack_id, body)
        except IntegrityError as exc:
            result.refused[pack_id] = exc.message
            log.warning("not vouching for pack %s: %s", pack_id, exc.message)
    step("vouch:verified")
    # One file per run; every CONSOLIDATE_AT runs it carries every live vouched pack and replaces
    # the others (written first, deleted after: a reader that misses one lists again).
    consolidate = len(keys) + 1 >= CONSOLIDATE_AT
    if verified or (consolidate and len(keys) > 1):
        packs = {**done, **verified} if consolidate else verified
        key = VOUCH_PREFIX + secrets.token_hex(16)
        written = {**times, **{p: repo.index.written[p] for p in verified if p in repo.index.written}}
        sealed = seal_vouched(repo.crypter, private_key, repo.id, packs, written)
        repo.store.put(key, sealed, if_absent=True)
        result.key, result.vouched = key, sorted(verified)
        step("vouch:written")
        if consolidate:
            for old in keys:
                repo.store.delete_or_hide(old)  # locked by a default retention: hidden
            step("vouch:consolidated")
    return result
