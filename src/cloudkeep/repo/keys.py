"""Key files (``keys/<id>``): the master key wrapped once per password.

Several key files may exist, one per password; any one opens the repository. Changing a password
writes a new key file and then deletes the old one, so a crash in between leaves both working.
"""

from __future__ import annotations

import json
import secrets
from concurrent.futures import ThreadPoolExecutor

from cloudkeep.errors import AuthenticationError, IntegrityError, NotFoundError
from cloudkeep.repo.crypto import KdfParams, MasterKey, unwrap_master_key, wrap_master_key
from cloudkeep.storage.base import ObjectStore

KEYS_PREFIX = "keys/"


def write_key_file(store: ObjectStore, master: MasterKey, password: str, kdf: KdfParams) -> str:
    if not password:
        raise AuthenticationError("an empty password is not allowed")
    key = KEYS_PREFIX + secrets.token_hex(16)
    store.put(key, json.dumps(wrap_master_key(master, password, kdf)).encode(), if_absent=True)
    return key


def open_with_password(store: ObjectStore, password: str) -> tuple[str, MasterKey]:
    """Try every key file; return the one the password opens and the master key."""
    keys = [info.key for info in store.list(KEYS_PREFIX)]
    if not keys:
        raise NotFoundError(
            f"{store.describe()}: no key files — this is not an initialised cloudkeep repository",
            hint="initialise it first (`cloudkeep repo init`) or check the URL/prefix",
        )

    def attempt(key: str) -> MasterKey | None:
        try:
            body = json.loads(store.get(key))
        except ValueError:
            return None
        try:
            return unwrap_master_key(body, password)
        except (AuthenticationError, IntegrityError, KeyError):
            return None

    with ThreadPoolExecutor(max_workers=min(4, len(keys))) as pool:
        for key, master in zip(keys, pool.map(attempt, keys), strict=True):
            if master is not None:
                return key, master
    raise AuthenticationError(
        f"wrong password for repository {store.describe()}", hint="check the password or use another key"
    )
