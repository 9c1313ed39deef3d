"""How many descriptors a backup may keep open, and how many of them its folders may take.

A backup keeps each folder open from its listing until its tree is stored: its files are opened
relative to it (no path lookup a swapped-in symbolic link could redirect), and a file's folder
stays open until the file is read. Folders whose files wait in queued batches add up: a tree of
20,000 folders holding one small file each reached the common soft limit of 1,024 descriptors,
and the folders opened then were backed up empty ("cannot list (Too many open files)"; 5,968 of
its 20,000 files were missing from the restore point). So the soft limit is raised toward the hard
one first, as Go's runtime does for every program (restic among them), and the walk opens no
folder past ``folder_budget`` while folders it has left are still open (``_Archiver.folder_room``).
A restore raises the limit too, and keeps at most half of it in open target folders
(``target_folders``): at a hard limit of 256 its 256 folders left no descriptor to open a pack.
Runs on the machines' Python (3.9+).
"""

from __future__ import annotations

# Raised to at most this: enough for any budget below, and small enough that nothing that walks
# the whole descriptor table (a child's close of inherited descriptors) slows down.
WANTED = 65536
# Kept for everything but folders and batches: standard streams, the file cache's SQLite and its
# journal, store connections (16 by default), pack staging files, worker and walk-ahead pipes, the
# early reads' files (at most 8), modules being imported.
RESERVE = 256
FEWEST_FOLDERS = 64  # the budget never goes below this (the walk's own path may exceed it anyway)
ASSUMED_LIMIT = 1024  # where the limit cannot be read
TARGET_FOLDERS_FEWEST = 8  # a restore's open target folders: each further one is reopened from an open one


def raise_open_files(wanted: int = WANTED) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` toward its hard limit (at most ``wanted``);
    the soft limit then in effect. A limit that cannot be raised is left as it is."""
    try:
        import resource
    except ImportError:  # not POSIX
        return ASSUMED_LIMIT
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    target = wanted if hard == unlimited else min(hard, wanted)
    if soft != unlimited and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # e.g. macOS caps it below the hard limit it reports
            pass
    return wanted if soft == unlimited else soft


def open_files_limit() -> int:
    """This process's soft ``RLIMIT_NOFILE`` (a worker process inherits its parent's, raised)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return ASSUMED_LIMIT
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return WANTED if soft == resource.RLIM_INFINITY else soft


def folder_budget(limit: int, threads: int, batch_files: int) -> int:
    """Folder descriptors a backup may keep open under a ``limit`` of descriptors, beside
    ``RESERVE`` and the files each of ``threads`` pool threads opens ahead for a batch."""
    return max(FEWEST_FOLDERS, limit - RESERVE - threads * batch_files)


def target_folders(limit: int, most: int) -> int:
    """Folder descriptors a restore may keep open (at most ``most``) under a ``limit``: half of
    it, the other half for packs, files being written, the store and the worker's pipes."""
    return max(TARGET_FOLDERS_FEWEST, min(most, limit // 2))
