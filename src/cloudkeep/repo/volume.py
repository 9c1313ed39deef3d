"""Volume-level backup: a block device or disk image read as one stream of content-defined chunks.

Back up a *consistent* view, not a live, changing device: on Linux take an LVM snapshot
(``lvcreate -s``) or ``fsfreeze -f`` the file system for the moment a snapshot is taken, then
back up the snapshot device; on Windows back up a VSS shadow copy (``\\\\?\\GLOBALROOT\\Device\\
HarddiskVolumeShadowCopyN``). The manifest holds a root tree with one file node for the device,
so browsing, ``check`` and prune treat volumes exactly like files.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from cloudkeep.compat import UTC
from cloudkeep.errors import ConfigurationError, NotFoundError, incomplete_restore
from cloudkeep.heap import limit_heap_fragmentation
from cloudkeep.repo.archiver import BackupProgress
from cloudkeep.repo.chunker import StreamCutter
from cloudkeep.repo.pack import DATA, TREE
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.restorefiles import RestoredFile, RestoreResult, Target
from cloudkeep.repo.restorer import _Restorer
from cloudkeep.repo.snapshot import Snapshot, new_snapshot_id
from cloudkeep.repo.targetfs import TargetDirs, os_error
from cloudkeep.repo.tree import FILE, Node, encode_tree
from cloudkeep.repo.writer import BlobWriter


def _device_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def backup_volume(
    repo: Repository,
    device: Path,
    *,
    hostname: str | None = None,
    tags: list[str] | None = None,
    progress: Callable[[BackupProgress], None] | None = None,
    retain_until: datetime | None = None,
    bandwidth_limit: int | None = None,
    threads: int = 3,
) -> Snapshot:
    path = os.path.abspath(os.fspath(device))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFoundError(f"volume {path} does not exist") from None
    except OSError as exc:
        raise os_error(exc, path) from exc
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise ConfigurationError(f"{path} is neither a block device nor an image file")
    limit_heap_fragmentation()
    hostname = hostname or socket.gethostname()
    started, clock = datetime.now(UTC), time.monotonic()
    writer = BlobWriter(repo, hostname=hostname, retain_until=retain_until, bandwidth_limit=bandwidth_limit)
    content: list[bytes] = []
    total = 0
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ck-volume")
    try:
        with open(path, "rb", buffering=0) as fh:
            size = _device_size(fh.fileno())
            fh.seek(0)
            window: deque[Future[tuple[bytes, bool]]] = deque()
            last = 0.0
            for data in StreamCutter(repo.config.chunker).cut(fh):
                # The cutter reuses its buffer: copy before handing the chunk to another thread.
                window.append(pool.submit(writer.save, DATA, bytes(data)))
                total += len(data)
                if len(window) >= threads * 4:
                    content.append(window.popleft().result()[0])
                if progress and time.monotonic() - last > 0.25:
                    last = time.monotonic()
                    stats = writer.stats
                    progress(BackupProgress(0, total, size, stats.bytes_new, stats.bytes_uploaded, path))
            content.extend(f.result()[0] for f in window)
        name = os.path.basename(path) or "volume"
        node = Node(
            name=name,
            type=FILE,
            mode=0o600,
            mtime_ns=st.st_mtime_ns,
            size=total,
            content=content,
            sparse=True,
        )
        tree_id, _ = writer.save(TREE, memoryview(encode_tree([node])))
        writer.flush()  # every pack and index durable; the session stays until the manifest is stored
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        writer.abort()
        raise
    pool.shutdown()
    stats = writer.stats
    snapshot = Snapshot(
        id=new_snapshot_id(),
        time=started,
        hostname=hostname,
        tags=list(tags or []),
        paths=[path],
        kind="volume",
        tree=tree_id.hex(),
        retain_until=retain_until,
        stats={
            "files": 1,
            "dirs": 0,
            "bytes_total": total,
            "bytes_read": total,
            "bytes_new": stats.bytes_new,
            "bytes_stored": stats.bytes_stored,
            "bytes_uploaded": stats.bytes_uploaded,
            "dedup_ratio": round(total / stats.bytes_new, 3) if stats.bytes_new else None,
            "compression_ratio": round(stats.bytes_new / stats.bytes_stored, 3)
            if stats.bytes_stored
            else None,
            "duration_s": round(time.monotonic() - clock, 3),
        },
    )
    writer.commit(lambda: repo.save_snapshot(snapshot, lock=writer.lock_until is not None))
    if progress:
        progress(BackupProgress(1, total, total, stats.bytes_new, stats.bytes_uploaded, None))
    return snapshot


def restore_volume(repo: Repository, snapshot_id: str, target: Path) -> RestoreResult:
    """Write a volume snapshot to an image file (created sparse) or an existing block device.

    ``target`` is the administrator's path (links in it are followed, as ``/dev/disk/by-id/…``
    needs); only the restore point's content is hostile. An image file is created anew (an
    existing one, or a link in its place, is unlinked first, never written through).
    """
    snap = repo.load_snapshot(snapshot_id)
    if snap.kind != "volume":
        raise ConfigurationError(f"restore point {snap.id} is a {snap.kind} backup, not a volume")
    nodes = [n for n in repo.load_tree(bytes.fromhex(snap.tree)) if n.type == FILE]
    if len(nodes) != 1:
        raise NotFoundError(f"restore point {snap.id} holds no volume image")
    node = nodes[0]
    dest = os.path.abspath(os.fspath(target))
    mode = os.stat(dest).st_mode if os.path.exists(dest) else 0
    is_device = stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
    folder = os.path.dirname(dest)
    try:
        if is_device and stat.S_ISBLK(mode) and _device_size_of(dest) < node.size:
            raise ConfigurationError(f"device {dest} is smaller than the volume ({node.size} bytes)")
        os.makedirs(folder, exist_ok=True)
        dirs = TargetDirs(os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as exc:
        raise os_error(exc, dest) from exc
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ck-volume")
    try:
        restorer = _Restorer(repo, dirs, None, pool)
        # A device is not zeroed: every chunk is written. An image file is sparse.
        image = RestoredFile(-1 if is_device else 0, dest if is_device else os.path.basename(dest), dest,
                      node.size, sparse=not is_device, single=False)  # fmt: skip
        offset = 0
        for blob_id in node.content:
            loc = restorer.located.get(blob_id) or repo.locate(blob_id)
            restorer.located[blob_id] = loc
            restorer.by_blob[blob_id].append(Target(image, offset))
            offset += loc.entry.raw_length
        if not is_device:
            restorer.created.append(pool.submit(restorer.precreate, image))
        restorer.result.files, restorer.result.bytes = 1, node.size
        restorer.start()  # one batch: the whole image
        restorer.fetch_rest()
    finally:
        pool.shutdown()
        dirs.close()
    restorer.result.verified = 0 if image.failed else 1
    if restorer.result.errors:
        raise incomplete_restore(f"volume restore of {snap.id} to {dest}", restorer.result.errors)
    return restorer.result


def _device_size_of(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _device_size(fd)
    finally:
        os.close(fd)
