"""Restore: browse and search restore points, restore files and volumes, download, export images.

Two data paths, and the server is on neither:

* to a protected machine — the server sends a ``restore`` / ``restore_volume`` / ``browse`` command
  to the target machine's Transport Service, which reads from object storage with scoped
  credentials; the session records the outcome;
* to the administrator's own machine — ``download_files``, ``search`` and ``export_image`` open the
  repository here with the repository credential (``cloudkeep.repo`` locally), as restic would.

``export_image`` writes a volume restore point as a raw disk image or a fixed VHD (raw + 512-byte
footer, padded to a whole MiB) ready for EC2 ImportSnapshot/ImportImage or an Azure managed disk.
"""

from __future__ import annotations

import logging
import os
import struct
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cloudkeep import repo as engine
from cloudkeep.errors import (
    ConfigurationError,
    IntegrityError,
    NotFoundError,
    incomplete_restore,
)
from cloudkeep.pathnames import display
from cloudkeep.protocol.bodies import RestoreResult, RestoreVolumeResult
from cloudkeep.server import manifest_pins
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DiscoveredMachine, RestorePoint
from cloudkeep.server.sessions import CommandSender, CommandSession, Outcome, default_dispatcher
from cloudkeep.server.sessions.access import RestoreGrant, load_repository, opened_repository
from cloudkeep.server.sessions.commands import call_machine, start_command_session

log = logging.getLogger(__name__)
VHD_ALIGN = 1 << 20  # Azure requires a VHD's virtual size to be a whole number of MiB


@dataclass(frozen=True)
class PointRef:
    id: str
    snapshot_id: str
    machine_id: str
    repository_id: str
    job_id: str | None
    mode: str
    created_at: datetime
    manifest_digest: str | None = None  # the pin accepted at backup time (manifest_pins)
    root_tree: str | None = None


def load_point(ctx: ServerContext, restore_point_id: str) -> PointRef:
    with ctx.db() as db:
        point = db.get(RestorePoint, restore_point_id)
        if point is None:
            raise NotFoundError(
                f"restore point {restore_point_id} does not exist",
                hint="list them with `cloudkeep restore-point list`",
            )
        if point.removed_at is not None:
            raise NotFoundError(
                f"restore point {restore_point_id} was removed by retention on {point.removed_at:%Y-%m-%d}"
            )
        return PointRef(
            point.id,
            point.snapshot_id,
            point.machine_id,
            point.repository_id,
            point.job_id,
            point.mode,
            point.created_at,
            point.manifest_digest,
            point.root_tree,
        )


def verify_point(ctx: ServerContext, point: PointRef) -> None:
    """Refuse a point whose manifest is no longer the one accepted at backup (before any command)."""
    with manifest_pins.manifest_reader(ctx, point.repository_id) as reader:
        manifest_pins.verify(ctx, reader, point)


def _verify_in(ctx: ServerContext, repo: engine.Repository, point: PointRef) -> None:
    """The same check through a repository opened here, which then reads that very manifest."""
    manifest_pins.verify(ctx, manifest_pins.ManifestReader.of_repository(repo), point)


def _target_machine(ctx: ServerContext, machine_id: str) -> DiscoveredMachine:
    with ctx.db() as db:
        machine = db.get(DiscoveredMachine, machine_id) or db.scalar(
            select(DiscoveredMachine).where(DiscoveredMachine.name == machine_id)
        )
        if machine is None:
            raise NotFoundError(f"machine {machine_id} does not exist")
        if machine.status != "deployed":
            raise ConfigurationError(
                f"machine {machine.name} cannot receive a restore: "
                f"it is not deployed (status {machine.status})",
                hint="rescan its protection group, or restore to another machine / download the files",
            )
        return machine


def _restored(machine: DiscoveredMachine) -> Callable[[RestoreResult | RestoreVolumeResult], Outcome]:
    """How a machine's restore result reads: verified → success, else a warning saying so."""

    def interpret(result: RestoreResult | RestoreVolumeResult) -> Outcome:
        stats = result.model_dump(include={"files", "bytes", "verified"}, exclude_unset=True)
        state = "success" if result.verified else "warning"
        files = result.files if isinstance(result, RestoreResult) else 1
        reason = f"restored {files} file(s), {result.bytes} bytes to {machine.name}"
        if state == "warning":
            reason += " (not verified)"
        task = {
            "stats": stats,
            "bytes_transferred": int(stats.get("bytes", 0)),
            "files": int(stats.get("files", 0)),
            "progress": 1.0 if state == "success" else 0.0,
        }
        return Outcome(state, reason, task)

    return interpret


def _start_command_session(
    ctx: ServerContext,
    point: PointRef,
    machine: DiscoveredMachine,
    kind: str,
    body: dict[str, Any],
    *,
    wait: bool,
    dispatcher: CommandSender | None,
    timeout: float = 48 * 3600,
    grant: RestoreGrant | None = None,
) -> str:
    spec = CommandSession(
        kind="restore",
        command=kind,
        body=body,
        machine_id=machine.id,
        machine_name=machine.name,
        repository_id=point.repository_id,
        job_id=point.job_id,
        trigger="manual",
        started_message=f"{kind} of {point.snapshot_id[:12]} on {machine.name}",
        interpret=_restored(machine),
        error_prefix=f"{machine.name}: ",
        timeout=timeout,
        stats={"restore_point_id": point.id, "snapshot_id": point.snapshot_id, "command": kind, **body},
        unfinished=Outcome("failed", "", {"stats": {}, "bytes_transferred": 0, "files": 0, "progress": 0.0}),
        grant=grant or RestoreGrant(point.snapshot_id),
    )
    return start_command_session(ctx, spec, wait=wait, dispatcher=dispatcher)


def _check_target(target_path: str | None, machine: DiscoveredMachine) -> None:
    """A target path names its place outright: absolute on Linux (a relative one would depend on the
    service's working folder), and no ``..`` (it could climb out of a simulated machine's root)."""
    if not target_path:
        return
    if ".." in target_path.replace("\\", "/").split("/"):
        raise ConfigurationError(
            f"target path {target_path!r} may not contain '..'", hint="give the folder's full path"
        )
    if machine.platform == "linux" and not target_path.startswith("/"):
        raise ConfigurationError(
            f"target path {target_path!r} on {machine.name} must be absolute", hint="start it with /"
        )


def start_file_restore(
    ctx: ServerContext,
    restore_point_id: str,
    *,
    paths: list[str] | None,
    target_machine_id: str | None,
    target_path: str | None,
    in_place: bool = False,
    wait: bool = False,
    dispatcher: CommandSender | None = None,
) -> str:
    """Restore files of a restore point onto a machine: in place, or below ``target_path``."""
    point = load_point(ctx, restore_point_id)
    if point.mode == "volume":
        raise ConfigurationError(
            f"restore point {point.id} is a volume backup",
            hint="use a volume restore or export it as an image",
        )
    if not in_place and not target_path:
        raise ConfigurationError(
            "a file restore needs a target folder, or in_place to overwrite the originals"
        )
    if in_place and target_path:
        raise ConfigurationError("give either a target folder or in_place, not both")
    machine = _target_machine(ctx, target_machine_id or point.machine_id)
    _check_target(target_path, machine)
    body = {
        "snapshot_id": point.snapshot_id,
        "paths": paths or None,
        "target": target_path or "/",
        "in_place": in_place,
    }
    verify_point(ctx, point)
    grant = RestoreGrant(point.snapshot_id, paths or None)  # format 3: the keys of exactly these paths
    return _start_command_session(
        ctx, point, machine, "restore", body, wait=wait, dispatcher=dispatcher, grant=grant
    )


def start_volume_restore(
    ctx: ServerContext,
    restore_point_id: str,
    *,
    target_path: str,
    target_machine_id: str | None = None,
    wait: bool = False,
    dispatcher: CommandSender | None = None,
) -> str:
    """Write a volume restore point to a machine's disk (block device) or to an image file on it."""
    point = load_point(ctx, restore_point_id)
    if point.mode != "volume":
        raise ConfigurationError(f"restore point {point.id} is a {point.mode} backup, not a volume")
    if not target_path:
        raise ConfigurationError("a volume restore needs a target disk or image file path")
    machine = _target_machine(ctx, target_machine_id or point.machine_id)
    _check_target(target_path, machine)
    body = {"snapshot_id": point.snapshot_id, "target": target_path}
    verify_point(ctx, point)
    return _start_command_session(
        ctx, point, machine, "restore_volume", body, wait=wait, dispatcher=dispatcher
    )


def browse(
    ctx: ServerContext,
    restore_point_id: str,
    path: str = "/",
    *,
    recursive: bool = False,
    pattern: str | None = None,
    via_machine: str | None = None,
    dispatcher: CommandSender | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """List a folder of a restore point; through a machine's Transport Service when ``via_machine``.

    Without ``via_machine`` the listing is read here with the repository credential (admin side).
    Returns ``{"entries": [{path, path_b64?, type, size, mode, mtime}], "truncated": bool}``: a path
    that is not valid UTF-8 is displayed with ``\\xNN`` escapes and exact in ``path_b64``
    (``cloudkeep.pathnames``); ``path`` may name entries either way.
    """
    point = load_point(ctx, restore_point_id)
    if via_machine is not None:
        machine = _target_machine(ctx, via_machine)
        verify_point(ctx, point)
        sender = dispatcher or default_dispatcher(ctx)
        body: dict[str, Any] = {"snapshot_id": point.snapshot_id, "path": path, "recursive": recursive}
        if pattern:
            body["pattern"] = pattern
        grant = RestoreGrant(point.snapshot_id, [path], trees_only=True)  # names, never contents
        listing = call_machine(ctx, sender, machine.id, machine.name, "browse", body,
                               repository_id=point.repository_id, timeout=timeout, grant=grant)  # fmt: skip
        return listing.model_dump(mode="json")
    import fnmatch

    with open_repository(ctx, point.repository_id) as repo:
        _verify_in(ctx, repo, point)
        exact = engine.resolve_path(repo, point.snapshot_id, path)
        entries = [e.to_json() for e in engine.list_tree(repo, point.snapshot_id, exact, recursive=recursive)]
    if pattern:
        entries = [e for e in entries if fnmatch.fnmatchcase(e["path"].rsplit("/", 1)[-1], pattern)]
    return {"entries": entries, "truncated": False}


# --- on the administrator's machine -------------------------------------------------------------


@contextmanager
def open_repository(
    ctx: ServerContext, repository_id: str, password: str | None = None
) -> Iterator[engine.Repository]:
    """The repository opened here with the full repository credential (never handed to machines)."""
    with opened_repository(ctx, load_repository(ctx, repository_id), password=password) as repo:
        yield repo


def download_files(
    ctx: ServerContext,
    restore_point_id: str,
    paths: list[str] | None,
    dest: Path,
    *,
    password: str | None = None,
) -> dict[str, Any]:
    """Restore files to a folder on the administrator's machine; verified chunk by chunk.

    A wrong ``password`` raises AuthenticationError before anything is written; entries the
    restore refused (hostile names, links out of ``dest``) raise RestoreIncompleteError naming
    them, after everything else was restored.
    """
    point = load_point(ctx, restore_point_id)
    if point.mode == "volume":
        raise ConfigurationError(f"restore point {point.id} is a volume backup", hint="use export_image")
    with open_repository(ctx, point.repository_id, password) as repo:
        _verify_in(ctx, repo, point)
        exact = [engine.resolve_path(repo, point.snapshot_id, p) for p in paths or []]
        result = engine.restore(repo, point.snapshot_id, Path(dest), paths=exact or None)
    if result.errors:  # never a plain success: the refused entries are named
        raise incomplete_restore(f"download of restore point {point.id} into {dest}", result.errors)
    return {
        "dest": str(dest),
        "files": int(result.files),
        "bytes": int(result.bytes),
        "verified": int(result.verified),
        "warnings": [display(str(w)) for w in result.warnings],
    }


def search(
    ctx: ServerContext,
    pattern: str,
    *,
    machine_id: str | None = None,
    job_id: str | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Find files by name glob (or path glob, when the pattern has a ``/``) across restore points."""
    stmt = select(RestorePoint).where(RestorePoint.removed_at.is_(None)).order_by(RestorePoint.created_at)
    if machine_id:
        stmt = stmt.where(RestorePoint.machine_id == machine_id)
    if job_id:
        stmt = stmt.where(RestorePoint.job_id == job_id)
    with ctx.db() as db:
        points = [p for p in db.scalars(stmt) if p.mode != "volume"]
    by_repo: dict[str, dict[str, RestorePoint]] = {}
    for p in points:
        by_repo.setdefault(p.repository_id, {})[p.snapshot_id] = p
    found: list[dict[str, Any]] = []
    for repository_id, snapshots in by_repo.items():
        with open_repository(ctx, repository_id) as repo:
            intact = [sid for sid, point in snapshots.items() if _intact(ctx, repo, point)]
            for snapshot_id, entry in engine.find(repo, pattern, snapshot_ids=intact):
                point = snapshots[snapshot_id]
                found.append(
                    {
                        "restore_point_id": point.id,
                        "machine_id": point.machine_id,
                        "created_at": point.created_at.isoformat(),
                        **entry.to_json(),
                    }
                )
                if len(found) >= limit:
                    return found
    return found


def _intact(ctx: ServerContext, repo: engine.Repository, point: RestorePoint) -> bool:
    """Search skips a point whose manifest was altered or lost, rather than failing for all of them."""
    try:
        manifest_pins.verify(ctx, manifest_pins.ManifestReader.of_repository(repo), point)
    except (IntegrityError, NotFoundError) as exc:
        log.warning("search skips restore point %s: %s", point.id, exc)
        return False
    return True


# --- export as a disk image ---------------------------------------------------------------------


def _chs(total_sectors: int) -> tuple[int, int, int]:
    """Disk geometry (cylinders, heads, sectors/track) as the VHD specification computes it."""
    total_sectors = min(total_sectors, 65535 * 16 * 255)
    if total_sectors >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total_sectors // spt
    else:
        spt = 17
        cth = total_sectors // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total_sectors // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total_sectors // spt
    return cth // heads, heads, spt


def vhd_footer(size: int, *, unique_id: bytes | None = None, now: datetime | None = None) -> bytes:
    """The 512-byte footer that makes a raw image a fixed VHD (Microsoft VHD format spec 1.0)."""
    stamp = int(((now or utcnow()) - datetime(2000, 1, 1, tzinfo=UTC)).total_seconds())
    cylinders, heads, spt = _chs(size // 512)
    fields = struct.pack(
        ">8sIIQI4sI4sQQHBBI",
        b"conectix",
        0x00000002,  # features: reserved bit always set
        0x00010000,  # format version 1.0
        0xFFFFFFFFFFFFFFFF,  # data offset: none for a fixed disk
        stamp & 0xFFFFFFFF,
        b"ckp ",  # creator application
        0x00010000,
        b"Wi2k",  # creator host OS (what Azure's tooling writes)
        size,  # original size
        size,  # current size
        cylinders,
        heads,
        spt,
        2,  # disk type: fixed
    )
    checksum_at = len(fields)
    body = fields + b"\0\0\0\0" + (unique_id or uuid.uuid4().bytes) + b"\0"
    body += b"\0" * (512 - len(body))
    checksum = (~sum(body)) & 0xFFFFFFFF
    return body[:checksum_at] + struct.pack(">I", checksum) + body[checksum_at + 4 :]


def export_image(
    ctx: ServerContext,
    restore_point_id: str,
    dest: Path,
    *,
    image_format: str = "raw",
    password: str | None = None,
) -> dict[str, Any]:
    """Write a volume restore point here as a raw image or a fixed VHD (see docs/restore.md to import it)."""
    if image_format not in ("raw", "vhd"):
        raise ConfigurationError(f"image format {image_format!r} is not supported", hint="use raw or vhd")
    point = load_point(ctx, restore_point_id)
    if point.mode != "volume":
        raise ConfigurationError(
            f"restore point {point.id} is a {point.mode} backup; only volume restore points export as disks"
        )
    dest = Path(dest)
    if dest.exists():
        raise ConfigurationError(
            f"{dest} already exists", hint="choose a new file name; nothing was overwritten"
        )
    partial = dest.with_name(dest.name + ".partial")
    try:
        with open_repository(ctx, point.repository_id, password) as repo:
            _verify_in(ctx, repo, point)
            result = engine.restore_volume(repo, point.snapshot_id, partial)
        size = partial.stat().st_size
        if image_format == "vhd":
            padded = -(-size // VHD_ALIGN) * VHD_ALIGN
            with partial.open("r+b") as fh:
                fh.truncate(padded)  # sparse zero padding
                fh.seek(padded)
                fh.write(vhd_footer(padded))
                fh.flush()
                os.fsync(fh.fileno())
            size = padded
        partial.rename(dest)  # never leave a half-written image under the final name
    finally:
        partial.unlink(missing_ok=True)
    return {"path": str(dest), "format": image_format, "disk_bytes": size, "verified": int(result.verified)}


__all__ = [
    "browse",
    "download_files",
    "export_image",
    "search",
    "start_file_restore",
    "start_volume_restore",
]
