"""Incremental backups on S3 (moto), as new processes, cloudkeep trees side by side with restic.

One tree, one repository per contender (restic, and cloudkeep from each ``--tree`` given: a
checkout or ``git archive`` whose ``bench/engine_vs_restic.py`` child runs that tree's code).
Each round applies a fresh ``corpora.mutate`` (seed = round) to the tree, then every contender
backs it up, in an order rotated per round: each sees exactly the same change since its previous
backup, under nearly the same load. Reports wall and user+sys CPU per contender and round, and
the medians; ratios are restic ÷ cloudkeep (above 1.00: cloudkeep faster).

    python bench/s3_incremental.py /tmp/bench/pristine-usr /tmp/work --tree . --tree /tmp/main
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpora
from engine_vs_restic import Cloudkeep, Measure, Restic, Tool, make_bucket, run, start_moto


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pristine", type=Path)
    parser.add_argument("work", type=Path, help="emptied first")
    parser.add_argument("--tree", action="append", type=Path, default=[], help="cloudkeep source tree")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    source = args.work / "src"
    shutil.copytree(args.pristine, source, symlinks=True)
    moto, endpoint = start_moto()
    try:
        contenders = _contenders(args, source, endpoint)
        for name, tool in contenders:
            tool.init()
            run(tool.backup(), tool.env)  # first backup
            run(tool.backup(), tool.env)  # no-change rerun (the caches are warm, as in the engine bench)
            print(f"{name}: ready", flush=True)
        times: dict[str, list[Measure]] = {name: [] for name, _ in contenders}
        for n in range(args.rounds):
            corpora.mutate(source, 1000 + n)
            order = contenders[n % len(contenders) :] + contenders[: n % len(contenders)]
            for name, tool in order:
                times[name].append(run(tool.backup(), tool.env))
            print(
                f"round {n}: "
                + "  ".join(f"{k} {v[-1].seconds:.2f}s ({v[-1].cpu:.2f} cpu)" for k, v in times.items()),
                flush=True,
            )
        _report(times)
    finally:
        os.killpg(moto.pid, signal.SIGTERM)
        moto.wait(timeout=10)


def _contenders(args: argparse.Namespace, source: Path, endpoint: str) -> list[tuple[str, Tool]]:
    aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    out: list[tuple[str, Tool]] = []
    make_bucket(endpoint, "restic")
    restic_work = args.work / "restic"
    restic_work.mkdir()
    out.append(("restic", Restic(f"s3:{endpoint}/restic/repo", aws, source, restic_work)))
    opts = {
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "aws_access_key_id": "bench",
        "aws_secret_access_key": "bench",
    }
    for i, tree in enumerate(args.tree):
        bucket = f"ck{i}"
        make_bucket(endpoint, bucket)
        work = args.work / bucket
        work.mkdir()
        out.append((f"ck:{tree}", _TreeCloudkeep(tree, f"s3://{bucket}/repo", opts, source, work)))
    return out


class _TreeCloudkeep(Cloudkeep):
    """The engine bench's cloudkeep child, run from another source tree (its code, its child)."""

    def __init__(self, tree: Path, url: str, opts: dict[str, str], source: Path, work: Path) -> None:
        super().__init__(url, opts, source, work, 3)
        self.child = str(tree.resolve() / "bench" / "engine_vs_restic.py")
        self.src_root = tree.resolve() / "src"

    def _cmd(self, *args: str) -> list[str]:
        return [
            sys.executable,
            self.child,
            "_ck",
            json.dumps({"url": self.url, "options": self.options}),
            *args,
        ]


def _report(times: dict[str, list[Measure]]) -> None:
    restic = times["restic"]
    wall_r = statistics.median(m.seconds for m in restic)
    cpu_r = statistics.median(m.cpu for m in restic)
    print(f"restic median {wall_r:.2f}s wall, {cpu_r:.2f}s cpu")
    for name, ms in times.items():
        if name == "restic":
            continue
        wall = statistics.median(m.seconds for m in ms)
        cpu = statistics.median(m.cpu for m in ms)
        per_round = [r.seconds / m.seconds for r, m in zip(restic, ms, strict=True)]
        print(
            f"{name}: median {wall:.2f}s wall, {cpu:.2f}s cpu; restic ÷ cloudkeep wall {wall_r / wall:.2f}"
            f" (cpu {cpu_r / cpu:.2f}); per round {' '.join(f'{x:.2f}' for x in per_round)}"
        )


if __name__ == "__main__":
    main()
