"""The repository format and backup engine: chunk, dedup, compress, encrypt, pack, index, restore.

Layers, bottom up: ``crypto``/``keys`` (secrets; ``confidential``: format 3's per-pack keys),
``pack``/``index`` (where blobs live), ``layout`` (the store layout and sealed config),
``repository`` (one opened repository over an ``ObjectStore``), ``writer`` (a backup session),
``tree``/``snapshot`` (manifests), then the operations: ``archiver`` (file backup; ``folders`` its
trees, ``masks`` its globs), ``volume``, ``browse``, ``restorer``, ``checker``, ``retention`` (the
one policy and planner, forget), ``prune``, ``grants`` and ``migrate``.
"""

from cloudkeep.repo.archiver import BackupProgress, backup_files
from cloudkeep.repo.browse import cat_file, find, list_tree, resolve_path
from cloudkeep.repo.checker import CheckReport, Problem, check, rebuild_index
from cloudkeep.repo.crypto import KdfParams
from cloudkeep.repo.prune import PruneResult, prune
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.restorer import RestoreResult, restore
from cloudkeep.repo.retention import ForgetResult, RetentionPolicy, forget, forget_snapshots, plan_retention
from cloudkeep.repo.snapshot import Snapshot
from cloudkeep.repo.tree import TreeEntry
from cloudkeep.repo.volume import backup_volume, restore_volume


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
