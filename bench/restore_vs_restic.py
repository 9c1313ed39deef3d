"""Benchmark: full restore only, cloudkeep (this checkout, and optionally a baseline) against restic.

Restore timings are the noisiest of the engine bench (ext4's inode allocator after mass
deletions, a shared machine), and the engine bench times one restore per tool after three
backups. This one backs each tool up once, then restores the same snapshot ``--rounds`` times,
the tools taking turns (each round starting with another), and reports medians; every restore
is verified with ``diff -r`` outside the timing. ``--before DIR`` adds a second cloudkeep, the
checkout in DIR (e.g. ``git archive main | tar -x -C DIR``), restoring the very same repository.

    python bench/restore_vs_restic.py --corpus usr --size 512 --workdir W --before /tmp/ck-before
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import corpora
from engine_vs_restic import (
    PASSWORD,
    Measure,
    _verify,
    generate,
    make_bucket,
    run,
    spread_folder,
    start_moto,
)

ROOT = Path(__file__).resolve().parents[1]
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def _ck(checkout: Path, spec: dict[str, object], *args: str) -> list[str]:
    """The engine bench's cloudkeep child, from ``checkout`` (it imports that checkout's ``src``)."""
    return [sys.executable, str(checkout / "bench" / "engine_vs_restic.py"), "_ck", json.dumps(spec), *args]


def _restic(repo: str, work: Path, *args: str) -> list[str]:
    return ["restic", "-q", "-r", repo, "--cache-dir", str(work / "restic-cache"), *args]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=512, help="corpus size in MiB")
    parser.add_argument("--corpus", choices=corpora.CORPORA, default="usr")
    parser.add_argument("--db", type=int, default=128, help="MiB of database-like file in real corpora")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--before", type=Path, help="a baseline checkout to restore with too")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-s3", action="store_true")
    parser.add_argument(
        "--targets",
        type=Path,
        help="where restores go (default: WORKDIR/restored); e.g. a journaled ext4 mounted for the bench, "
        "where recently freed inodes cost nothing (README, restore4)",
    )
    parser.add_argument("--format", choices=(2, 3), type=int, default=3)
    args = parser.parse_args()
    work: Path = args.workdir or Path(tempfile.mkdtemp(prefix="ck-restore-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    restored: Path = args.targets or work / "restored"
    source = work / "src"
    if not source.exists():
        if args.corpus == "synthetic":
            generate(source, args.size, args.seed)
        else:
            corpora.build(args.corpus, source, args.size, args.seed, args.db)
    env = {**os.environ, **AWS_ENV, "RESTIC_PASSWORD": PASSWORD}
    cloudkeeps = [("cloudkeep", ROOT)]
    if args.before:
        cloudkeeps.append(("cloudkeep-before", args.before.resolve()))
    moto = None
    rows: dict[tuple[str, str], list[Measure]] = {}
    try:
        backends = ["local"] + ([] if args.no_s3 else ["s3"])
        for backend in backends:
            if backend == "local":
                spec: dict[str, object] = {"url": f"file://{work}/ck-repo", "options": {}}
                restic_repo = str(work / "restic-repo")
            else:
                moto, endpoint = start_moto()
                make_bucket(endpoint, "ck-restore")
                make_bucket(endpoint, "restic-restore")
                options = {
                    "endpoint_url": endpoint,
                    "region": "us-east-1",
                    "aws_access_key_id": "bench",
                    "aws_secret_access_key": "bench",
                }
                spec = {"url": "s3://ck-restore/repo", "options": options}
                restic_repo = f"s3:{endpoint}/restic-restore/repo"
            for path in (work / "ck-repo", work / "restic-repo", work / "ck-cache", work / "restic-cache"):
                shutil.rmtree(path, ignore_errors=True)
            run(_ck(ROOT, spec, "init", str(args.format)), env)
            run(_ck(ROOT, spec, "backup", str(source), str(work / "ck-cache")), env)
            run(_restic(restic_repo, work, "init"), env)
            run(_restic(restic_repo, work, "backup", str(source)), env)
            # the cache folder the backup filled (index files on S3), like restic's --cache-dir
            cache = str(work / "ck-cache")
            tools = [(name, _ck(checkout, spec, "restore", "{T}", cache)) for name, checkout in cloudkeeps]
            tools.append(("restic", _restic(restic_repo, work, "restore", "latest", "--target", "{T}")))
            for n in range(args.rounds):
                for name, argv in tools[n % len(tools) :] + tools[: n % len(tools)]:
                    # A fresh folder each time, in a block group of its own (``spread_folder``), the
                    # earlier ones kept until the round ends: creating files right after deleting
                    # many makes ext4 scan the freed inodes (README).
                    target = spread_folder(restored) / f"{backend}-{n}-{name}"
                    measure = run([str(target) if a == "{T}" else a for a in argv], env)
                    _verify(source, target)
                    rows.setdefault((backend, name), []).append(measure)
                    print(f"{time.strftime('%H:%M:%S')} {backend} {name}: {_show(measure)}", flush=True)
            shutil.rmtree(restored, ignore_errors=True)
            if moto is not None:
                os.killpg(moto.pid, signal.SIGTERM)
                moto.wait(timeout=10)
                moto = None
    finally:
        if moto is not None:
            os.killpg(moto.pid, signal.SIGTERM)
            moto.wait(timeout=10)
        shutil.rmtree(restored, ignore_errors=True)
    _report(rows)


def _show(m: Measure) -> str:
    return (
        f"{m.seconds:.2f} s wall, {m.cpu:.2f} s CPU ({m.system:.2f} s system), {m.max_rss_mib:.0f} MiB "
        f"(all processes: {m.pss_mib:.0f} MiB PSS)"
    )


def _median(ms: list[Measure]) -> Measure:
    return Measure(
        statistics.median(m.seconds for m in ms),
        statistics.median(m.max_rss_mib for m in ms),
        statistics.median(m.cpu for m in ms),
        statistics.median(m.system for m in ms),
        statistics.median(m.pss_mib for m in ms),
    )


def _report(rows: dict[tuple[str, str], list[Measure]]) -> None:
    print(
        "\n| backend | tool | median wall | median CPU (system) | peak RSS (largest process) "
        "| peak PSS (all processes) | restic ÷ tool: wall (CPU) / RSS / PSS |"
    )
    print("|---|---|---|---|---|---|---|")
    for (backend, name), ms in rows.items():
        m, r = _median(ms), _median(rows[(backend, "restic")])
        ratio = (
            f"{r.seconds / m.seconds:.2f} ({r.cpu / m.cpu:.2f}) / {r.max_rss_mib / m.max_rss_mib:.2f}"
            f" / {r.pss_mib / max(1, m.pss_mib):.2f}"
        )
        print(
            f"| {backend} | {name} | {m.seconds:.2f} s | {m.cpu:.2f} s ({m.system:.2f}) "
            f"| {m.max_rss_mib:.0f} MiB | {m.pss_mib:.0f} MiB | "
            f"{'' if name == 'restic' else ratio} |"
        )


if __name__ == "__main__":
    main()
