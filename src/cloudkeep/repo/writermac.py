"""Per-writer authentication of index files (issue 19; docs/format.md, "Writer keys").

On a format 3 repository a machine deduplicates against its own namespace's index files. Every
machine holds the shared key that seals index files, and on Azure's flat namespace an agent's SAS
can create any name, so a compromised machine could write ``writers/<victim>/index/<new>`` with
forged entries. Each writer therefore appends an HMAC-SHA256 under a key of its own, which the
server derives from the repository's private key and sends only in that writer's bundle: another
machine cannot compute it, and the server (full keys) can check every writer's files.

The tag is a trailer after the sealed bytes (``magic ‖ tag``, 48 bytes), so every holder of the
shared key still reads the file; a reader from before this change fails to open it (the AES-GCM
tag no longer matches), which loses dedup, never data.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAC_MAGIC = b"CLOUDKEEP-WMAC-1"
MAC_SIZE = 32
TRAILER_SIZE = len(MAC_MAGIC) + MAC_SIZE
_CONTEXT = b"cloudkeep-writer-index-v1"
NO_MAC = "carries no writer MAC"  # forged, or written before writer keys: the two cannot be told apart


def writer_key(private_key: bytes, repo_id: str, writer_prefix: str) -> bytes:
    """Derived, never stored: only the private key's holder (the server) computes any writer's key."""
    info = f"cloudkeep-writer-index:{repo_id}:{writer_prefix}".encode()
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(private_key)


def _tag(key: bytes, object_key: str, sealed: bytes) -> bytes:
    # The object's name is covered too: a tag is valid for one file of one writer.
    return hmac.new(key, _CONTEXT + b"\0" + object_key.encode() + b"\0" + sealed, hashlib.sha256).digest()


def add_mac(key: bytes, object_key: str, sealed: bytes) -> bytes:
    return sealed + MAC_MAGIC + _tag(key, object_key, sealed)


def split_mac(data: bytes) -> tuple[bytes, bytes | None]:
    """``(sealed bytes, tag or None)``. Sealed bytes end with a random AES-GCM tag, so a file without
    a trailer ends with the magic by chance with probability 2^-128."""
    if len(data) > TRAILER_SIZE and data[-TRAILER_SIZE:-MAC_SIZE] == MAC_MAGIC:
        return data[:-TRAILER_SIZE], data[-MAC_SIZE:]
    return data, None


def forged(problems: dict[str, str]) -> dict[str, str]:
    """The files among ``mac_problem``'s answers that carry a wrong MAC: no honest writer made them."""
    return {key: why for key, why in problems.items() if NO_MAC not in why}


def mac_problem(key: bytes, object_key: str, data: bytes) -> str | None:
    """Why ``data`` is not an index file its writer authenticated, or ``None`` if it is."""
    sealed, tag = split_mac(data)
    if tag is None:
        return f"index file {object_key}: {NO_MAC} (forged, or written before writer keys)"
    if not hmac.compare_digest(tag, _tag(key, object_key, sealed)):
        return f"index file {object_key}: its writer MAC does not verify (not written by its writer)"
    return None
