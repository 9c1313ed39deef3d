"""S3 requests per step, cloudkeep and restic, through the counting proxy (bench/s3_proxy.py).

    python bench/s3_requests.py --corpus usr --size 128 --workdir /tmp/ck-requests

Same steps as engine_vs_restic.py (first backup, no-change rerun, incremental, full restore) on
one moto server; prints one table of request counts by kind, per tool and step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
import corpora
from engine_vs_restic import (
    Cloudkeep,
    Restic,
    Tool,
    generate,
    make_bucket,
    mutate,
    run,
    start_loopback,
    start_moto,
)


def start_proxy(upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    script = str(Path(__file__).resolve().parent / "s3_proxy.py")
    trace = ["--trace"] if os.environ.get("CK_PROXY_TRACE") else []
    return start_loopback(
        lambda port: [sys.executable, script, "--upstream", upstream, "--port", str(port), *trace],
        "proxy",
        quiet=False,
    )


def counts(proxy: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{proxy}/__counts") as answer:
        result: dict[str, int] = json.load(answer)
    return result


def steps(
    tool: Tool, source: Path, work: Path, proxy: str, corpus: str, seed: int
) -> dict[str, dict[str, int]]:
    tool.init()
    counts(proxy)
    found: dict[str, dict[str, int]] = {}
    for step in ("first backup", "no-change rerun", "incremental"):
        if step == "incremental" and corpus == "synthetic":
            mutate(source, seed)
        elif step == "incremental":
            corpora.mutate(source, seed)
        run(tool.backup(), tool.env)
        found[step] = counts(proxy)
    target = work / f"restore-{tool.name}"
    run(tool.restore(target), tool.env)
    found["full restore"] = counts(proxy)
    shutil.rmtree(target, ignore_errors=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--corpus", choices=corpora.CORPORA, default="synthetic")
    parser.add_argument("--db", type=int, default=16, help="MiB of database-like file in real corpora")
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    moto, endpoint = start_moto()
    proxy_proc, proxy = start_proxy(endpoint)
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    options = {"endpoint_url": proxy, "region": "us-east-1", "aws_access_key_id": "bench"}
    options["aws_secret_access_key"] = "bench"
    table: dict[str, dict[str, dict[str, int]]] = {}
    try:
        for name in ("cloudkeep", "restic"):
            source = work / "machine"
            shutil.rmtree(source, ignore_errors=True)
            if args.corpus == "synthetic":
                generate(source, args.size, args.seed)
            else:
                pristine = work / f"pristine-{args.corpus}"
                if not pristine.exists():
                    corpora.build(args.corpus, pristine, args.size, args.seed, args.db)
                shutil.copytree(pristine, source, symlinks=True)
            run_dir = work / name
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir()
            make_bucket(endpoint, f"req-{name}")
            tool: Tool
            if name == "cloudkeep":
                tool = Cloudkeep(f"s3://req-{name}/repo", options, source, run_dir, 3)
            else:
                tool = Restic(f"s3:{proxy}/req-{name}/repo", env, source, run_dir)
            table[name] = steps(tool, source, run_dir, proxy, args.corpus, args.seed)
    finally:
        for proc in (proxy_proc, moto):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
    print("| tool | step | requests | by kind |\n|---|---|---|---|")
    for name, by_step in table.items():
        for step, kinds in by_step.items():
            detail = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
            print(f"| {name} | {step} | {sum(kinds.values())} | {detail} |")


if __name__ == "__main__":
    main()
