"""Key files (``keys/<id>``): the master key wrapped once per password.

Several key files may exist, one per password; any one opens the repository. Changing a password
writes a new key file and then deletes the old one, so a crash in between leaves both working.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cloudkeep.compat import zip_strict
from cloudkeep.errors import AuthenticationError, IntegrityError, NotFoundError
from cloudkeep.repo.crypto import KdfParams, MasterKey, unwrap_master_key, wrap_master_key
from cloudkeep.storage.base import ObjectNotFoundError, ObjectStore

KEYS_PREFIX = "keys/"


def write_key_file(
    store: ObjectStore, master: MasterKey, password: str, kdf: KdfParams, *, remember: Path | None = None
) -> str:
    """Store a new key file for ``password``; with ``remember`` (``remembered_key``), this machine
    keeps a copy, so its next open derives the key while the store is still being asked."""
    if not password:
        raise AuthenticationError("an empty password is not allowed")
    key = KEYS_PREFIX + secrets.token_hex(16)
    raw = json.dumps(wrap_master_key(master, password, kdf)).encode()
    store.put(key, raw, if_absent=True)
    if remember is not None:
        _remember(remember, key, raw)
    return key


def remembered_key(store: ObjectStore, cache_dir: Path | None) -> Path | None:
    """Where this machine keeps a copy of the key file its password last opened (remote stores):
    its key derivation can then start before the store answers (``open_with_password``)."""
    if cache_dir is None or not store.remote:
        return None
    return cache_dir / "keys" / hashlib.sha256(store.describe().encode()).hexdigest()[:32]


def _unwrap_remembered(path: Path, password: str) -> tuple[str, MasterKey, bytes] | None:
    """The remembered key file's name and master key; ``None`` if missing, damaged or not this
    password's (then the store's key files are tried as always)."""
    try:
        body = json.loads(path.read_bytes())
        raw = str(body["file"]).encode()
        return str(body["key"]), unwrap_master_key(json.loads(raw), password), raw
    except (OSError, ValueError, KeyError, TypeError, AttributeError, AuthenticationError, IntegrityError):
        return None


def _remember(path: Path, key: str, raw: bytes) -> None:
    """Best effort: a cache that cannot be written only costs the next open its head start."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        temporary.write_text(json.dumps({"key": key, "file": raw.decode()}))
        os.replace(temporary, path)


def open_with_password(
    store: ObjectStore, password: str, remembered: Path | None = None
) -> tuple[str, MasterKey]:
    """Try every key file; return the one the password opens and the master key.

    A key file that cannot be read as one (not JSON, missing fields, bad encoding) is damage,
    not a wrong password: when nothing opens, the error says which files are damaged.

    ``remembered`` (``remembered_key``): a local copy of the key file that opened last time is
    unwrapped while the store lists ``keys/``; it is used only if the store still lists that
    key file (key files are written once under a random name, so a listed name is the same
    file; a deleted one, e.g. after a password change, is not used).
    """
    with ThreadPoolExecutor(max_workers=1) as early:
        head_start: Future[tuple[str, MasterKey, bytes] | None] | None = None
        if remembered is not None:
            head_start = early.submit(_unwrap_remembered, remembered, password)
        keys = [info.key for info in store.list(KEYS_PREFIX)]
        found = head_start.result() if head_start is not None else None
    if found is not None and found[0] in keys:
        return found[0], found[1]
    key, master, raw = _open_listed(store, password, keys)
    if remembered is not None:
        _remember(remembered, key, raw)
    return key, master


def _open_listed(store: ObjectStore, password: str, keys: list[str]) -> tuple[str, MasterKey, bytes]:
    if not keys:
        raise NotFoundError(
            f"{store.describe()}: no key files — this is not an initialised cloudkeep repository",
            hint="initialise it first (`cloudkeep repository add`) or check the URL/prefix",
        )

    def attempt(key: str) -> tuple[MasterKey, bytes] | str | None:
        """The master key (and the file), a description of the damage, or ``None`` for a wrong
        password."""
        try:
            raw = store.get(key)
        except ObjectNotFoundError:
            return None  # replaced meanwhile by a password change
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            return unwrap_master_key(body, password), raw
        except AuthenticationError:
            return None
        except (ValueError, KeyError, TypeError, IntegrityError) as exc:  # binascii.Error is a ValueError
            return f"{key}: {type(exc).__name__}: {str(exc)[:80]}"

    damaged: list[str] = []
    with ThreadPoolExecutor(max_workers=min(4, len(keys))) as pool:
        for key, outcome in zip_strict(keys, pool.map(attempt, keys)):
            if isinstance(outcome, tuple):
                return key, outcome[0], outcome[1]
            if isinstance(outcome, str):
                damaged.append(outcome)
    if len(damaged) == len(keys):
        raise IntegrityError(
            f"repository {store.describe()}: every key file is damaged ({'; '.join(damaged)})",
            hint="this is damage, not a wrong password: restore keys/ from a copy, and check the store "
            "with `cloudkeep repository verify` (some S3-compatible stores keep upload framing as data)",
        )
    hint = "check the password or use another key"
    if damaged:
        hint += f"; {len(damaged)} damaged key file(s) could not be tried: {'; '.join(damaged)}"
    raise AuthenticationError(f"wrong password for repository {store.describe()}", hint=hint)
