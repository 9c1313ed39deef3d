"""Repository size over fresh repositories: cloudkeep's (each with its own random chunker seed and
keys) beside restic's, on the engine bench's steps (first backup, no-change rerun, the day-2
``corpora.mutate``, incremental), local folders, bytes by object kind.

Why: one engine bench run is one seed, and a repository's size moves with its seed (where chunks
of large files are cut, and so what an edit re-uploads); this shows the spread.

    python bench/repo_size.py /tmp/bench/pristine-usr /tmp/work --repos 4 [--tree <cloudkeep tree>]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpora
from engine_vs_restic import Cloudkeep, Restic, Tool, du, run


def by_kind(repo: Path) -> dict[str, int]:
    """Bytes per top-level folder (data, index, snapshots, ...) or file (config, ...)."""
    kinds: collections.Counter[str] = collections.Counter()
    for path in repo.rglob("*"):
        if path.is_file():
            kinds[path.relative_to(repo).parts[0]] += path.stat().st_size
    return dict(kinds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pristine", type=Path, help="a corpus built by engine_vs_restic.py (pristine-*)")
    parser.add_argument("work", type=Path, help="emptied first")
    parser.add_argument("--repos", type=int, default=4, help="fresh repositories per tool")
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    source = args.work / "machine"
    for n in range(args.repos):
        for name in ("cloudkeep", "restic"):
            shutil.rmtree(source, ignore_errors=True)
            shutil.copytree(args.pristine, source, symlinks=True)  # the same day 1 for every repository
            work = args.work / f"{name}{n}"
            work.mkdir()
            tool: Tool
            if name == "cloudkeep":
                tool = Cloudkeep(f"file://{work}/repo", {}, source, work, 3)
                tool.src_root = args.tree.resolve() / "src"
            else:
                tool = Restic(str(work / "repo"), {}, source, work)
            tool.init()
            run(tool.backup(), tool.env)
            first = du(work / "repo")
            run(tool.backup(), tool.env)
            corpora.mutate(source, 42)  # the engine bench's seed
            run(tool.backup(), tool.env)
            final = du(work / "repo")
            kinds = by_kind(work / "repo")
            print(f"{name}{n}: first {first} final {final} incremental +{final - first} {kinds}", flush=True)
            shutil.rmtree(work / "repo")


if __name__ == "__main__":
    main()
