"""The repository format and backup engine: chunk, dedup, compress, encrypt, pack, index, restore.

Layers, bottom up: ``crypto``/``keys`` (secrets; ``confidential``: format 3's per-pack keys),
``pack``/``index`` (where blobs live), ``layout`` (the store layout and sealed config),
``repository`` (one opened repository over an ``ObjectStore``), ``writer`` (a backup session),
``tree``/``snapshot`` (manifests), then the operations: ``archiver`` (file backup; ``folders`` its
trees, ``masks`` its globs), ``volume``, ``browse``, ``restorer``, ``checker``, ``retention`` (the
one policy and planner, forget), ``prune``, ``grants`` and ``migrate``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported now: ``prune`` names both a submodule and this package's function, and importing the
# submodule later would set the package's ``prune`` to the module.
from cloudkeep.repo.prune import PruneResult, prune

if TYPE_CHECKING:
    from cloudkeep.repo.archiver import BackupProgress, backup_files
    from cloudkeep.repo.browse import cat_file, find, list_tree, resolve_path
    from cloudkeep.repo.checker import CheckReport, Problem, check, rebuild_index
    from cloudkeep.repo.crypto import KdfParams
    from cloudkeep.repo.repository import Repository
    from cloudkeep.repo.restorer import RestoreResult, restore
    from cloudkeep.repo.retention import (
        ForgetResult,
        RetentionPolicy,
        forget,
        forget_snapshots,
        plan_retention,
    )
    from cloudkeep.repo.snapshot import Snapshot
    from cloudkeep.repo.tree import TreeEntry
    from cloudkeep.repo.volume import backup_volume, restore_volume

# Each name's module, imported when the name is first asked for. A worker process (``procworker``,
# ``restoreworker``) imports this package before its own module and needs none of the operations:
# importing them all took a backup's worker 93 ms at its start, on the backup's busy cores, 77 now.
_MODULES = {
    "BackupProgress": "archiver", "backup_files": "archiver", "cat_file": "browse", "find": "browse",
    "list_tree": "browse", "resolve_path": "browse", "CheckReport": "checker", "Problem": "checker",
    "check": "checker", "rebuild_index": "checker", "KdfParams": "crypto", "Repository": "repository",
    "RestoreResult": "restorer", "restore": "restorer",
    "ForgetResult": "retention", "RetentionPolicy": "retention", "forget": "retention",
    "forget_snapshots": "retention", "plan_retention": "retention", "Snapshot": "snapshot",
    "TreeEntry": "tree", "backup_volume": "volume", "restore_volume": "volume",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # asked once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULES])


def list_snapshots(repo: Repository) -> list[Snapshot]:
    """Every restore point, oldest first."""
    return sorted(repo.snapshots(), key=lambda s: s.time)


__all__ = [
    "BackupProgress",
    "CheckReport",
    "ForgetResult",
    "KdfParams",
    "Problem",
    "PruneResult",
    "Repository",
    "RestoreResult",
    "RetentionPolicy",
    "Snapshot",
    "TreeEntry",
    "backup_files",
    "backup_volume",
    "cat_file",
    "check",
    "find",
    "forget",
    "forget_snapshots",
    "list_snapshots",
    "list_tree",
    "plan_retention",
    "prune",
    "rebuild_index",
    "resolve_path",
    "restore",
    "restore_volume",
]
