"""One incremental backup alone, in process: first backup, the day-2 mutation of
``bench/corpora.mutate``, then the timed second backup (wall, CPU, store requests by kind).

The tree is copied from ``pristine`` into ``work`` first so the pristine copy stays as it is.
``--profile`` prints cProfile of the walking thread of the second backup; ``--s3`` runs it on a
moto server started here (the index cache kept between the two backups, as the agent keeps it);
``--calls`` prints every store call of the timed backup with its thread and start/end times.

    python bench/incremental.py /tmp/bench/pristine-usr /tmp/incr-work [--profile] [--s3] [--calls]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import os
import pstats
import resource
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpora
from engine_vs_restic import make_bucket, start_moto

from cloudkeep.heap import limit_heap_fragmentation
from cloudkeep.repo import Repository, backup_files
from cloudkeep.storage import ObjectStore, open_store

CALLS: list[tuple[str, str, str, float, float]] = []  # (method, first argument, thread, start, end)


def _count(store: Any) -> collections.Counter[str]:
    """Wrap the store's public methods so each call is counted by name (and kept in ``CALLS``)."""
    counts: collections.Counter[str] = collections.Counter()
    for name in dir(store):
        attr = getattr(store, name, None)
        if name.startswith("_") or not callable(attr):
            continue

        def counted(*a: Any, _n: str = name, _f: Any = attr, **k: Any) -> Any:
            counts[_n] += 1
            start = time.monotonic()
            try:
                return _f(*a, **k)
            finally:
                what = str(a[0])[-40:] if a else ""
                CALLS.append((_n, what, threading.current_thread().name, start, time.monotonic()))

        with contextlib.suppress(AttributeError, TypeError):
            setattr(store, name, counted)
    return counts


PHASES: dict[str, float] = collections.defaultdict(float)


def _timed(owner: Any, name: str, label: str) -> None:
    """Add the wall time of ``owner.name`` to ``PHASES[label]``."""
    inner = getattr(owner, name)

    def timed(*a: Any, **k: Any) -> Any:
        start = time.monotonic()
        try:
            return inner(*a, **k)
        finally:
            PHASES[label] += time.monotonic() - start

    setattr(owner, name, timed)


def _phases() -> None:
    """Time the walk, the wait for the pool, the pack/index flush, the commit, the cache commit."""
    from cloudkeep.repo import archiver, cache, writer

    _timed(archiver._Archiver, "walk", "walk (calling thread)")
    _timed(archiver._Archiver, "file_job", "file jobs (pool threads, summed)")
    _timed(writer.BlobWriter, "flush", "writer flush (packs, index)")
    _timed(writer.BlobWriter, "commit", "writer commit (manifest, markers)")
    _timed(cache.FileCache, "commit", "file cache commit")
    _timed(cache.FileCache, "__init__", "file cache open")
    _timed(archiver.Repository, "save_snapshot", "save snapshot")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pristine", type=Path)
    parser.add_argument("work", type=Path, help="emptied first: the tree, repository and cache")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--s3", action="store_true", help="on a moto server started here")
    parser.add_argument("--calls", action="store_true", help="print every store call of the timed backup")
    args = parser.parse_args()
    limit_heap_fragmentation()  # first, as the product's entry points
    moto = None
    try:
        if args.s3:
            moto, endpoint = start_moto()
            make_bucket(endpoint, "bench")
            options = {"endpoint_url": endpoint, "region": "us-east-1"}
            options.update(aws_access_key_id="bench", aws_secret_access_key="bench")
            _run(args, lambda: open_store("s3://bench/repo", **options))
        else:
            _run(args, lambda: open_store(f"file://{args.work}/repo"))
    finally:
        if moto is not None:
            os.killpg(moto.pid, signal.SIGTERM)
            moto.wait(timeout=10)


def _run(args: argparse.Namespace, new_store: Callable[[], ObjectStore]) -> None:
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    tree = args.work / "tree"
    shutil.copytree(args.pristine, tree, symlinks=True)
    store = new_store()
    Repository.create(store, "bench")
    cache = args.work / "cache"
    repo = Repository.open(store, "bench", cache_dir=cache)
    backup_files(repo, [tree], hostname="bench", cache_dir=cache, threads=args.threads)
    corpora.mutate(tree, args.seed)
    built = time.monotonic()
    store = new_store()
    counts = _count(store)
    opened = time.monotonic()
    repo = Repository.open(store, "bench", cache_dir=cache)
    print(
        f"store {opened - built:.2f}s, open {time.monotonic() - opened:.2f}s,"
        f" store calls {dict(sorted(counts.items()))}"
    )
    counts.clear()
    CALLS.clear()
    _phases()
    profile = cProfile.Profile()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    if args.profile:
        profile.enable()
    snap = backup_files(repo, [tree], hostname="bench", cache_dir=cache, threads=args.threads)
    if args.profile:
        profile.disable()
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"incremental wall {time.monotonic() - start:.2f}s"
        f" user {after.ru_utime - before.ru_utime:.2f} sys {after.ru_stime - before.ru_stime:.2f}"
        f" stats {snap.stats}"
    )
    print("store calls", dict(sorted(counts.items())))
    for label, seconds in PHASES.items():
        print(f"  {label}: {seconds:.2f}s")
    if args.calls:
        for name, what, thread, begun, ended in sorted(CALLS, key=lambda call: call[3]):
            print(f"  {begun - start:6.3f} {ended - begun:6.3f} {thread:14} {name} {what}")
    if args.profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
