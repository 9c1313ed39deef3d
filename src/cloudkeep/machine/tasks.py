"""Backup, retention, check, restore and browse with the engine (``cloudkeep.repo``).

The agent writes straight to object storage with the scoped credentials from the command's
sealed ``repository``; when the server sends ``update_credentials`` during a long task, the
store is re-opened with the new credentials before the next storage call.
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cloudkeep.compat import UTC
from cloudkeep.errors import CloudkeepError, NotFoundError, incomplete_restore
from cloudkeep.machine.handlers import Handler, TaskCancelled, TaskContext, run_shell
from cloudkeep.machine.timings import StageClock
from cloudkeep.protocol import RepositoryAccess
from cloudkeep.protocol.bodies import (
    Backup,
    Browse,
    Check,
    Restore,
    RestoreVolume,
    Retention,
    RetentionCommand,
)
from cloudkeep.repo import (
    BackupProgress,
    ForgetResult,
    Repository,
    RetentionPolicy,
    backup_files,
    backup_volume,
    forget,
    forget_snapshots,
    list_tree,
    prune,
    resolve_path,
)
from cloudkeep.repo import check as check_repository
from cloudkeep.repo import restore as restore_files
from cloudkeep.repo import restore_volume as restore_image
from cloudkeep.repo.confidential import WriterBundle
from cloudkeep.repo.layout import writer_namespace
from cloudkeep.repo.lock import MaintenanceBusyError
from cloudkeep.storage.base import ObjectStore, open_store

PROGRESS_INTERVAL = 1.0

log = logging.getLogger(__name__)


ENTIRE_MACHINE_EXCLUDES = [
    "/proc", "/sys", "/dev", "/run", "/tmp", "/var/run",
    "/var/lib/cloudkeep/cache", "/var/lib/cloudkeep/tmp",  # the agent's file cache and staged packs
]  # fmt: skip


class TaskFailed(CloudkeepError):
    """A task step failed (pre-script, engine error) with a message for the administrator."""


class RefreshableStore:
    """An ObjectStore proxy that swaps in a store with fresh credentials when the server sends them."""

    def __init__(self, ctx: TaskContext) -> None:
        self._ctx = ctx
        self._access = ctx.repository_access()
        self._store = self._open(self._access)
        self._lock = threading.Lock()
        self.stage_clock: StageClock | None = None  # set by a backup to time its storage writes

    @staticmethod
    def _open(access: RepositoryAccess) -> ObjectStore:
        return open_store(access.store_url, **access.options)

    def _current(self) -> ObjectStore:
        fresh = self._ctx.refreshed_access()
        if fresh is not None and fresh != self._access:
            with self._lock:
                if fresh != self._access:
                    self._store, self._access = self._open(fresh), fresh
        return self._store

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._current(), name)
        clock = self.__dict__.get("stage_clock")
        return clock.timed_put(attribute) if name in ("put", "put_file") and clock is not None else attribute


class ProgressReporter:
    """Turns engine progress callbacks into ~1 message a second with rate and ETA."""

    def __init__(self, ctx: TaskContext, interval: float = PROGRESS_INTERVAL) -> None:
        self.ctx = ctx
        self.interval = interval
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, progress: BackupProgress, *, force: bool = False) -> None:
        # The engine calls this between files/chunks: the least invasive place to stop a cancelled
        # task. The engine aborts (no snapshot committed; uploaded packs stay reusable).
        if self.ctx.cancelled():
            raise TaskCancelled("cancelled by the server")
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        read, total = progress.bytes_read, progress.bytes_total
        rate = read / max(now - self.started, 1e-6)
        eta = (total - read) / rate if total and rate > 0 and total >= read else None
        self.ctx.progress({
            "bytes_read": read, "bytes_total": total, "rate": round(rate, 1), "eta_seconds": eta,
            "files": progress.files_done, "bytes_uploaded": progress.bytes_uploaded,
            "current_path": progress.current_path,
        })  # fmt: skip


def open_repository(ctx: TaskContext, cache_dir: Path | None = None) -> Repository:
    """The repository the command names; ``cache_dir``: where index files are kept between runs."""
    refreshable = RefreshableStore(ctx)
    access = refreshable._access
    password, writer_prefix = access.password, access.writer_prefix
    store = cast(ObjectStore, refreshable)  # a proxy: every attribute comes from the current store
    if access.writer is not None:  # format 3: a writer bundle, never the password
        assert writer_prefix is not None  # RepositoryAccess requires it with a bundle
        bundle = WriterBundle.from_json(access.writer)
        repository = Repository.open_writer(store, bundle, writer_prefix=writer_prefix, cache_dir=cache_dir)
        grants = access.grants or {}
        if access.grants_object and access.grants_key:
            grants = _grants_object(store, access.grants_object, access.grants_key)
        repository.grant_keys(_grants(grants))
        return repository
    assert password is not None  # RepositoryAccess carries one or the other
    try:
        return Repository.open(store, password, writer_prefix=writer_prefix, cache_dir=cache_dir)
    except NotFoundError:
        ctx.warnings.append("repository was not initialised; created it")
        Repository.create(store, password, cache_dir=cache_dir).close()
        return Repository.open(store, password, writer_prefix=writer_prefix, cache_dir=cache_dir)


def _grants(grants: dict[str, str]) -> dict[str, bytes]:
    """The content keys the server sent for this restore; a malformed one is a clear error."""
    try:
        keys = {str(key): base64.b64decode(value, validate=True) for key, value in grants.items()}
    except (ValueError, TypeError) as exc:
        raise TaskFailed(f"the server sent malformed restore keys ({exc})") from None
    if any(len(key) != 32 for key in keys.values()):
        raise TaskFailed("the server sent restore keys of the wrong size")
    return keys


def _grants_object(store: ObjectStore, name: str, key: str) -> dict[str, str]:
    """The keys of a large restore, from the one-off object the server wrote for this command."""
    data = store.get(name)
    try:
        plain = AESGCM(base64.b64decode(key, validate=True)).decrypt(data[:12], data[12:], name.encode())
        grants = json.loads(plain)
    except (ValueError, TypeError, InvalidTag) as exc:
        raise TaskFailed(f"restore keys in {name} do not open ({type(exc).__name__})") from None
    if not isinstance(grants, dict) or not all(isinstance(v, str) for v in grants.values()):
        raise TaskFailed(f"restore keys in {name} are malformed")
    return grants


def _as_dict(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _as_dict(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _as_dict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_dict(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


def _policy(policy: Retention) -> RetentionPolicy:
    return RetentionPolicy.from_mapping(policy.model_dump(exclude_none=True))


def _script(ctx: TaskContext, script: str | None, timeout: float, what: str) -> None:
    if not script:
        return
    outcome = run_shell(ctx.config, "shell", script, timeout)
    if outcome["exit_code"] != 0:
        message = f"{what} exited with {outcome['exit_code']}: {outcome['stderr'].strip()[-500:]}"
        if what == "pre-script":
            raise TaskFailed(message, hint="fix the job's pre-freeze script; the backup did not run")
        ctx.warnings.append(message)


def backup(ctx: TaskContext, body: Backup) -> dict[str, Any]:
    _script(ctx, body.pre_script, body.script_timeout, "pre-script")
    try:
        if ctx.cancelled():
            raise TaskCancelled("cancelled by the server before the backup started")
        repository = open_repository(ctx, ctx.config.state_dir / "cache")  # beside the file cache
        clock = StageClock()
        if isinstance(repository.store, RefreshableStore):
            repository.store.stage_clock = clock
        engine_started = time.monotonic()
        report = ProgressReporter(ctx)
        common: dict[str, Any] = {"hostname": body.hostname, "tags": body.tags, "progress": report,
                                  "retain_until": body.retain_until}  # fmt: skip
        if body.mode == "volume":
            devices = [ctx.config.host_path(s) for s in body.sources]
            snapshot = [backup_volume(repository, device, **common) for device in devices][-1]
        else:
            sources = ["/"] if body.mode == "entire" else body.sources
            excludes = body.excludes + (ENTIRE_MACHINE_EXCLUDES if body.mode == "entire" else [])
            # Sources, masks and the restore point all use the machine's own paths; ``root`` says where
            # its "/" is on this host (not "/" only on a simulated machine).
            snapshot = backup_files(
                repository, sources, includes=body.includes, excludes=excludes, root=ctx.config.root,
                cache_dir=ctx.config.state_dir / "cache", bandwidth_limit=body.bandwidth_limit, **common,
            )  # fmt: skip
        timings = clock.timings(time.monotonic() - engine_started)
        forgotten: list[str] = []
        if body.retention is not None:
            policy = _policy(body.retention)
            forgotten = forget(repository, policy, now=datetime.now(UTC), hostname=body.hostname).removed
            if body.prune:
                _prune_unless_busy(repository)
    finally:
        _script(ctx, body.post_script, body.script_timeout, "post-script")
    when = snapshot.time
    stats = _as_dict(snapshot.stats or {})
    stats.pop("warnings", None)  # the engine's warnings are its skipped entries, reported below
    skipped: list[dict[str, Any]] = stats.pop("errors", None) or []
    total = int(stats.pop("errors_total", len(skipped)) or 0)
    return {
        "snapshot_id": snapshot.id,
        "snapshot_time": when.isoformat(),
        # what the server's catalog pins (and checks against the repository) for this restore point
        "manifest_digest": snapshot.digest or None,
        "root_tree": snapshot.tree or None,
        "stats": {**stats, "timings": timings},
        "forgotten": forgotten,
        "warnings": list(ctx.warnings) + _skipped_warnings(skipped, total),
        "errors": _within(skipped, ERRORS_BUDGET),
        "errors_total": total,
    }


ERRORS_BUDGET = 24 * 1024  # bytes of JSON for skipped entries: a result must fit one 64 KiB message
WARNINGS_BUDGET = 8 * 1024
WARNING_NAME_LIMIT = 400  # a longer path (up to 4 KiB and past it) is shown by its ends


def _within(items: list[Any], budget: int) -> list[Any]:
    """The first ``items`` whose JSON fits in ``budget`` bytes."""
    kept: list[Any] = []
    used = 0
    for item in items:
        used += len(json.dumps(item)) + 1
        if used > budget:
            break
        kept.append(item)
    return kept


def _skipped_warnings(skipped: list[dict[str, Any]], total: int) -> list[str]:
    """Warnings naming the entries a backup could not read: the machine's result is then a warning."""
    if not total:
        return []
    lines = []
    for entry in skipped:
        path = str(entry.get("path", ""))
        if len(path) > WARNING_NAME_LIMIT:
            half = WARNING_NAME_LIMIT // 2
            path = f"{path[:half]}…{path[-half:]}"
        lines.append(f"{path}: {entry.get('error', 'not backed up')}")
    shown = _within(lines, WARNINGS_BUDGET)
    head = f"{total} entries could not be read and are missing from the restore point"
    if total == 1:
        head = "1 entry could not be read and is missing from the restore point"
    more = [f"… and {total - len(shown)} more"] if total > len(shown) else []
    return [head, *shown, *more]


def _prune_unless_busy(repository: Repository) -> None:
    """Prune after forgetting, unless another machine's prune holds the repository right now.

    Each machine of a job prunes after its retention; when two finish together, one prune runs
    and reclaims for both, so the other is skipped (logged), not failed.
    """
    try:
        prune(repository)
    except MaintenanceBusyError as exc:
        log.info("prune skipped: %s", exc.message)


def retention(ctx: TaskContext, body: RetentionCommand) -> dict[str, Any]:
    """Forget what the server decided (``forget``); with only a policy (an older server), plan here.

    Kept only for servers older than issue 19: current servers forget and prune themselves and
    never send this (agents' credentials cannot delete; docs/security.md).

    The signed command still names restore points from outside this machine: ``forget_snapshots``
    refuses the whole list if one id lies outside this writer's scope or ``hostname``.
    """
    repository = open_repository(ctx)
    now = datetime.now(UTC)
    outcome: ForgetResult
    if body.forget is not None:
        # With the full credential (to prune) the repository is unscoped: name this machine's own.
        mine = writer_namespace(ctx.config.machine_id)
        outcome = forget_snapshots(
            repository, body.forget, hostname=body.hostname, writer_scope=mine, now=now
        )
    else:
        assert body.policy is not None  # the body's validator requires one of the two
        outcome = forget(repository, _policy(body.policy), now=now, hostname=body.hostname)
    if body.prune:
        _prune_unless_busy(repository)
    return {"kept": list(outcome.kept), "removed": list(outcome.removed)}


def check(ctx: TaskContext, body: Check) -> dict[str, Any]:
    repository = open_repository(ctx)
    if body.read_data_subset is not None:
        outcome = check_repository(repository, read_data_subset=body.read_data_subset)
    else:
        outcome = check_repository(repository)
    return {"ok": outcome.ok, "problems": [str(p) for p in outcome.problems][:200]}


def _restore_target(ctx: TaskContext, path: str) -> Path:
    """The target on this host; ``..`` is refused (it could climb out of a simulated machine's root)."""
    if ".." in path.replace("\\", "/").split("/"):
        raise TaskFailed(f"target path {path!r} may not contain '..'")
    return ctx.config.host_path(path)


def restore(ctx: TaskContext, body: Restore) -> dict[str, Any]:
    # Restore points hold the machine's own paths, so in place means under the machine's root.
    target = ctx.config.root if body.in_place else _restore_target(ctx, body.target)
    repository = open_repository(ctx, ctx.config.state_dir / "cache")
    # Paths may name entries as results show them (not-UTF-8 bytes as \xNN): find the exact ones.
    paths = [resolve_path(repository, body.snapshot_id, p) for p in body.paths] if body.paths else None
    report = ProgressReporter(ctx)
    outcome = restore_files(repository, body.snapshot_id, target, paths=paths, progress=report)
    files, verified = outcome.files, outcome.verified
    if outcome.errors:  # the session must fail, naming what was refused; the rest is restored
        raise incomplete_restore(
            f"restore of {body.snapshot_id[:12]} into {target}: {files} file(s) restored, but", outcome.errors
        )
    return {
        "files": files,
        "bytes": outcome.bytes,
        "verified": files == verified,
        "verified_files": verified,
        "warnings": [str(w) for w in outcome.warnings][:50],
    }


def restore_volume(ctx: TaskContext, body: RestoreVolume) -> dict[str, Any]:
    repository = open_repository(ctx)
    outcome = restore_image(repository, body.snapshot_id, _restore_target(ctx, body.target))
    return {"bytes": outcome.bytes, "verified": bool(outcome.verified)}


def browse(ctx: TaskContext, body: Browse) -> dict[str, Any]:
    repository = open_repository(ctx)
    path = resolve_path(repository, body.snapshot_id, body.path)
    tree = list_tree(repository, body.snapshot_id, path, recursive=body.recursive)
    entries = [e.to_json() for e in tree]  # displayed paths, exact bytes in path_b64 (docs/protocol.md)
    if body.pattern:
        entries = [e for e in entries if fnmatch.fnmatch(str(_entry_name(e)), body.pattern)]
    truncated = len(entries) > body.limit
    entries = entries[: body.limit]
    # Stay under the queue limit: a listing too big is cut and the caller pages by path.
    while entries and len(repr(entries)) > 48 * 1024:
        entries, truncated = entries[: len(entries) * 3 // 4], True
    return {"entries": entries, "truncated": truncated}


def _entry_name(entry: Any) -> Any:
    if isinstance(entry, dict):
        return entry.get("path") or entry.get("name", "")
    return entry


HANDLERS: dict[str, Handler] = {
    "backup": backup,
    "retention": retention,
    "check": check,
    "restore": restore,
    "restore_volume": restore_volume,
    "browse": browse,
}
ProgressCallback = Callable[[dict[str, Any]], None]
