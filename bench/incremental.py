"""One incremental backup alone, in process: first backup, the day-2 mutation of
``bench/corpora.mutate``, then the timed second backup (wall, CPU, store requests by kind).

The tree is copied from ``pristine`` into ``work`` first so the pristine copy stays as it is.
``--profile`` prints cProfile of the walking thread of the second backup.

    python bench/incremental.py /tmp/bench/pristine-usr /tmp/incr-work [--profile]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import pstats
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpora

from cloudkeep.repo import Repository, backup_files
from cloudkeep.storage import open_store


def _count(store: Any) -> collections.Counter[str]:
    """Wrap the store's public methods so each call is counted by name."""
    counts: collections.Counter[str] = collections.Counter()
    for name in dir(store):
        attr = getattr(store, name, None)
        if name.startswith("_") or not callable(attr):
            continue

        def counted(*a: Any, _n: str = name, _f: Any = attr, **k: Any) -> Any:
            counts[_n] += 1
            return _f(*a, **k)

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
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    tree = args.work / "tree"
    shutil.copytree(args.pristine, tree, symlinks=True)
    store = open_store(f"file://{args.work}/repo")
    Repository.create(store, "bench")
    cache = args.work / "cache"
    repo = Repository.open(store, "bench")
    backup_files(repo, [tree], hostname="bench", cache_dir=cache, threads=args.threads)
    corpora.mutate(tree, args.seed)
    store = open_store(f"file://{args.work}/repo")
    counts = _count(store)
    repo = Repository.open(store, "bench")
    counts.clear()
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
    if args.profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
