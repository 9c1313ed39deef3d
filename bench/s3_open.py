"""Opening a repository on S3 (moto) that many backups have written to: index cache or not.

    python bench/s3_open.py --backups 40 --repeat 5

Each backup writes at least one index file, so a machine backed up daily for a month opens a
repository of 30+ index files every run. Prints the median time of ``Repository.open`` (fresh
store each time, key derivation included) and the index files downloaded per open, without and
with the index cache. ``--fresh N`` also opens it N times each in a new process, as a backup
run does, and prints the medians of building the store (the botocore client) and of the open.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from engine_vs_restic import make_bucket, start_moto

from cloudkeep.repo import Repository, backup_files
from cloudkeep.storage import ObjectStore, open_store


def counted_store(url: str, options: dict[str, Any], gets: list[str]) -> ObjectStore:
    store = open_store(url, **options)

    def record(params: dict[str, Any], **_: Any) -> None:
        if "/index/" in "/" + params["Key"]:
            gets.append(params["Key"])

    store.client.meta.events.register("before-parameter-build.s3.GetObject", record)  # type: ignore[attr-defined]
    return store


def fresh_child(url: str, options: str, cache: str) -> None:
    """In a new process: time ``open_store`` then ``Repository.open`` (cloudkeep.repo imported first,
    as a backup run has it)."""
    start = time.perf_counter()
    store = open_store(url, **json.loads(options))
    built = time.perf_counter()
    Repository.open(store, "bench-password", cache_dir=Path(cache))
    print(json.dumps({"store": built - start, "open": time.perf_counter() - built}))


def fresh(url: str, options: dict[str, Any], cache: Path, runs: int) -> None:
    results = []
    for _ in range(runs + 1):  # the first fills the index cache; not counted
        child = [sys.executable, __file__, "_child", url, json.dumps(options), str(cache)]
        results.append(json.loads(subprocess.run(child, check=True, capture_output=True).stdout))
    store = statistics.median(r["store"] for r in results[1:]) * 1000
    opened = statistics.median(r["open"] for r in results[1:]) * 1000
    print(f"fresh process   store {store:4.0f} ms  open {opened:4.0f} ms  sum {store + opened:4.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backups", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-cache", action="store_true", help="only without the cache (older trees)")
    parser.add_argument("--fresh", type=int, default=0, help="also this many opens in new processes")
    args = parser.parse_args()
    moto, endpoint = start_moto()
    try:
        make_bucket(endpoint, "open-bench")
        options = {"endpoint_url": endpoint, "region": "us-east-1", "aws_access_key_id": "bench"}
        options["aws_secret_access_key"] = "bench"
        url = "s3://open-bench/repo"
        work = Path(tempfile.mkdtemp(prefix="ck-open-"))
        Repository.create(open_store(url, **options), "bench-password")
        for day in range(args.backups):  # one small change a day: one index file each
            source = work / "machine"
            source.mkdir(exist_ok=True)
            (source / f"day{day}.bin").write_bytes(random.Random(day).randbytes(256 * 1024))
            repo = Repository.open(open_store(url, **options), "bench-password")
            backup_files(repo, [source], hostname="bench", cache_dir=work / "files")
        caches = [("no index cache", None)] + ([] if args.no_cache else [("index cache", work / "cache")])
        for label, cache in caches:
            times, downloads = [], []
            for _ in range(args.repeat + 1):  # the first fills the cache; not counted
                gets: list[str] = []
                store = counted_store(url, options, gets)
                start = time.perf_counter()
                # (no cache_dir at all without the cache: the script also runs on older trees)
                opened = (
                    Repository.open(store, "bench-password", cache_dir=cache)
                    if cache
                    else Repository.open(store, "bench-password")
                )
                times.append(time.perf_counter() - start)
                downloads.append(len(gets))
            print(
                f"{label:15} index files {len(opened.index_files):3}  open median "
                f"{statistics.median(times[1:]) * 1000:6.0f} ms  index GETs per open {downloads[1:]}"
            )
        if args.fresh:
            fresh(url, options, work / "cache-fresh", args.fresh)
    finally:
        os.killpg(moto.pid, signal.SIGTERM)
        moto.wait(timeout=10)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        fresh_child(*sys.argv[2:])
    else:
        main()
