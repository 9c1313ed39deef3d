"""A first backup alone, in process: wall and CPU of ``backup_files`` into a new local repository,
without the interpreter start, imports and key derivation the engine bench's child pays too.

Run it from two ``git archive``s (``PYTHONPATH=<archive>/src``) in turns to compare commits on
the same tree; ``--profile`` prints cProfile of the walking thread (the calling thread), where
the time goes once the pool is busy. ``--processes yes|no`` forces the file-content worker
processes on or off (default: as a backup decides); their CPU is printed apart.

    python bench/first_backup.py /tmp/bench/pristine-usr /tmp/fb-work [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import shutil
import time
from pathlib import Path

from cloudkeep.heap import limit_heap_fragmentation
from cloudkeep.repo import Repository, backup_files
from cloudkeep.storage import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree", type=Path)
    parser.add_argument("work", type=Path, help="emptied first: holds the repository and the cache")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--processes", choices=("auto", "yes", "no"), default="auto", help="file content in worker processes"
    )
    parser.add_argument("--process-limit", type=int, default=None, help="at most this many worker processes")
    args = parser.parse_args()
    limit_heap_fragmentation()  # first, as the product's entry points
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    store = open_store(f"file://{args.work}/repo")
    Repository.create(store, "bench")
    repo = Repository.open(store, "bench")
    profile = cProfile.Profile()
    processes = {"auto": None, "yes": True, "no": False}[args.processes]
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    if args.profile:
        profile.enable()
    cache = args.work / "cache"
    snap = backup_files(
        repo,
        [args.tree],
        hostname="bench",
        cache_dir=cache,
        threads=args.threads,
        processes=processes,
        process_limit=args.process_limit,
    )
    if args.profile:
        profile.disable()
    after = resource.getrusage(resource.RUSAGE_SELF)
    # Children: the worker processes (repo/procpool.py), but also any other child (ctypes' ldconfig
    # run for memory.py), so "largest child" is not a worker's RSS unless workers ran.
    kids_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = kids_after.ru_utime + kids_after.ru_stime - kids.ru_utime - kids.ru_stime
    print(
        f"wall {time.monotonic() - start:.2f}s user {after.ru_utime - before.ru_utime:.2f}"
        f" sys {after.ru_stime - before.ru_stime:.2f} workers {workers:.2f} files {snap.stats['files']}"
        f" peak RSS {after.ru_maxrss / 1024:.0f} MiB, largest child {kids_after.ru_maxrss / 1024:.0f} MiB"
    )
    if args.profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
