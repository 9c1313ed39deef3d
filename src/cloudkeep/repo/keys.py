"""Key files (``keys/<id>``): the master key wrapped once per password.

Several key files may exist, one per password; any one opens the repository. Changing a password
writes a new key file and then deletes the old one, so a crash in between leaves both working.
"""

from __future__ import annotations

import json
import secrets
from concurrent.futures import ThreadPoolExecutor

from cloudkeep.compat import zip_strict
from cloudkeep.errors import AuthenticationError, IntegrityError, NotFoundError
from cloudkeep.repo.crypto import KdfParams, MasterKey, unwrap_master_key, wrap_master_key
from cloudkeep.storage.base import ObjectNotFoundError, ObjectStore

KEYS_PREFIX = "keys/"


def write_key_file(store: ObjectStore, master: MasterKey, password: str, kdf: KdfParams) -> str:
    if not password:
        raise AuthenticationError("an empty password is not allowed")
    key = KEYS_PREFIX + secrets.token_hex(16)
    store.put(key, json.dumps(wrap_master_key(master, password, kdf)).encode(), if_absent=True)
    return key


def open_with_password(store: ObjectStore, password: str) -> tuple[str, MasterKey]:
    """Try every key file; return the one the password opens and the master key.

    A key file that cannot be read as one (not JSON, missing fields, bad encoding) is damage,
    not a wrong password: when nothing opens, the error says which files are damaged.
    """
    keys = [info.key for info in store.list(KEYS_PREFIX)]
    if not keys:
        raise NotFoundError(
            f"{store.describe()}: no key files — this is not an initialised cloudkeep repository",
            hint="initialise it first (`cloudkeep repository add`) or check the URL/prefix",
        )

    def attempt(key: str) -> MasterKey | str | None:
        """The master key, a description of the damage, or ``None`` for a wrong password."""
        try:
            raw = store.get(key)
        except ObjectNotFoundError:
            return None  # replaced meanwhile by a password change
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            return unwrap_master_key(body, password)
        except AuthenticationError:
            return None
        except (ValueError, KeyError, TypeError, IntegrityError) as exc:  # binascii.Error is a ValueError
            return f"{key}: {type(exc).__name__}: {str(exc)[:80]}"

    damaged: list[str] = []
    with ThreadPoolExecutor(max_workers=min(4, len(keys))) as pool:
        for key, outcome in zip_strict(keys, pool.map(attempt, keys)):
            if isinstance(outcome, MasterKey):
                return key, outcome
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
