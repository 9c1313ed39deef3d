"""Upgrading a repository to format 3 (confidentiality between writers) for new writes.

Nothing already stored is rewritten except the index: packs and manifests written before stay
readable with the repository key until prune rewrites or removes them (docs/format.md,
"Migration to format 3").
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

from cloudkeep.compat import UTC
from cloudkeep.errors import CloudkeepError, ConflictError
from cloudkeep.repo.confidential import (
    CONFIDENTIAL_FORMAT,
    CONFIDENTIAL_KEY,
    ConfidentialKeys,
    open_confidential,
)
from cloudkeep.repo.generations import read_horizon, write_horizon
from cloudkeep.repo.index import encode_index_file, new_index_key
from cloudkeep.repo.layout import CONFIG_KEY, seal_config
from cloudkeep.repo.lock import maintenance_lock
from cloudkeep.repo.repository import Repository


def migrate_to_confidential(
    repo: Repository, *, now: datetime | None = None, grace: timedelta = timedelta(hours=1)
) -> bool:
    """Make ``repo`` format 3; ``False`` if it already is. Needs the password (full access).

    Holds the maintenance lock: the index is re-sealed under the shared key (so machines, which
    hold no repository key, still deduplicate against the old packs), and a prune sweeping
    meanwhile could see a pack named again after it dropped it. The key material is create-only,
    so two migrations racing agree on one key pair.
    """
    repo.require_full_access("migrating the repository")
    if repo.config.version >= CONFIDENTIAL_FORMAT:
        return False
    master = repo._master()
    with maintenance_lock(repo, "migrate", now=now or datetime.now(UTC), grace=grace):
        with contextlib.suppress(ConflictError):  # another migration won: use its keys
            repo.store.put(CONFIDENTIAL_KEY, ConfidentialKeys.generate().seal(master), if_absent=True)
        keys = open_confidential(repo.store, master)
        config = repo.config.migrated(CONFIDENTIAL_FORMAT)
        repo.store.put(CONFIG_KEY, seal_config(master, config))
        repo.adopt_confidential(config, keys)
        repo.load_index()
        old = sorted(repo.index_files - set(repo.unreadable_index_files))
        packs = dict(repo.index.pack_entries())
        packs.update(repo.doomed.pack_entries())
        written = {**repo.doomed.written, **repo.index.written}  # packs' write times (generations) stay known
        if packs:  # the new file first: until the old ones go, both say the same
            repo.store.put(new_index_key(), encode_index_file(repo.crypter, packs, written))
        for key in old:
            # One locked without versioning stays: the server still reads it, and prune replaces it later.
            with contextlib.suppress(CloudkeepError):
                repo.store.delete_or_hide(key)
        horizon = read_horizon(repo)  # machines read it with the shared key only
        if horizon is not None:
            write_horizon(repo, horizon)
        repo.load_index()
    return True
