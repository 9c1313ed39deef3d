"""A full restore alone, in process, with the decoder count given: wall and CPU per round, peak RSS.

``restorer.LOCAL_THREADS`` (decoders and file creators) is one per two cores, measured only on 2
cores (bench/README.md, "Full restore: one decoder on two cores"); a local restore adds
``restorer.BULK_DECODERS`` decoders that take only chunks of large files (stop 30). This
measures it elsewhere: the counts take turns, round after round, restoring the newest restore
point of a local repository into an emptied target, without the interpreter start, imports and
key derivation the engine bench's child pays too. Make the repository with ``first_backup.py`` or the engine
bench (``W/machine/.../ck-repo``, password ``bench-password``).

    python bench/restore_alone.py /tmp/fb-work/repo /tmp/restore-target --decoders 1 2 4 --rounds 3
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import time
from pathlib import Path

from cloudkeep.heap import limit_heap_fragmentation
from cloudkeep.repo import Repository, list_snapshots, restore, restorer
from cloudkeep.storage import open_store


def one_restore(repo: Repository, snapshot_id: str, target: Path, decoders: int) -> tuple[float, float]:
    """Wall and CPU seconds of one restore with ``decoders`` threads into an emptied ``target``."""
    shutil.rmtree(target, ignore_errors=True)
    restorer.LOCAL_THREADS = decoders  # read when a restore starts
    before, start = _cpu(), time.monotonic()
    result = restore(repo, snapshot_id, target)
    wall = time.monotonic() - start
    if not result.ok:
        raise SystemExit(f"restore failed: {result.errors[:3]}")
    return wall, _cpu() - before


def _cpu() -> float:
    """CPU seconds of this process and its ended children (restore's worker process)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="a local repository folder")
    parser.add_argument("target", type=Path, help="emptied before each restore, removed at the end")
    parser.add_argument("--password", default="bench-password")
    parser.add_argument("--decoders", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    limit_heap_fragmentation()  # first, as the product's entry points
    repo = Repository.open(open_store(f"file://{args.repo.resolve()}"), args.password)
    snapshot_id = list_snapshots(repo)[-1].id
    walls: dict[int, list[float]] = {n: [] for n in args.decoders}
    cpus: dict[int, list[float]] = {n: [] for n in args.decoders}
    for round_ in range(args.rounds):
        order = args.decoders[round_ % len(args.decoders) :] + args.decoders[: round_ % len(args.decoders)]
        for decoders in order:  # each round starts with another count
            wall, cpu = one_restore(repo, snapshot_id, args.target, decoders)
            walls[decoders].append(wall)
            cpus[decoders].append(cpu)
            print(f"round {round_ + 1} decoders {decoders}: wall {wall:.2f} s, CPU {cpu:.2f} s", flush=True)
    shutil.rmtree(args.target, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"\n| decoders | median wall | median CPU |  (peak RSS of the whole run {peak:.0f} MiB, "
        f"of its largest worker process {worker:.0f} MiB)"
    )
    print("|---|---|---|")
    for n in args.decoders:
        print(f"| {n} | {statistics.median(walls[n]):.2f} s | {statistics.median(cpus[n]):.2f} s |")


if __name__ == "__main__":
    main()
