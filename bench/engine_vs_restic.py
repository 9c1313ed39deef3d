"""Benchmark: cloudkeep's backup engine against restic (and borg if installed) on the same data.

A seeded generator builds a realistic machine (text and logs, source trees with ~20k small files,
binaries, already-compressed media, a few large files), then a day-2 mutation (~2 %: appends,
in-place rewrites, adds, deletes). Each tool runs as a child process so wall time and peak RSS are
measured the same way for all. Steps: first backup, no-change rerun, incremental after the
mutation, full restore, repository size; once on a local folder and once on S3 (a moto server
started here). Borg only has a local mode.

    python bench/engine_vs_restic.py --size 100      # MiB; default 1024
    python bench/engine_vs_restic.py --corpus usr --size 640   # a real tree (bench/corpora.py)
    python bench/engine_vs_restic.py --corpus mail --cold      # page cache emptied before each step
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
import corpora

PASSWORD = "bench-password"
ROOT = Path(__file__).resolve().parents[1]

# -- data generator -------------------------------------------------------------------------

_TEXT = bytes(range(256)).translate(bytes((b"etaoinshrdlucmfwypvbgkjqxz      \n" * 8)[:256]))
_CODE = bytes(range(256)).translate(bytes((b"abcdefghijklmnopqrstuvwxyz_(){};=.,  \n\n    " * 6)[:256]))


def _text(rng: random.Random, n: int) -> bytes:
    """Compressible, non-repeating text (letter frequencies roughly English): zstd gets ~2x."""
    return rng.randbytes(n).translate(_TEXT)


def _code(rng: random.Random, n: int) -> bytes:
    header = b"// SPDX-License-Identifier: Apache-2.0\n// Copyright the project authors\n\n"
    return header + rng.randbytes(max(0, n - len(header))).translate(_CODE)


def _binary(rng: random.Random, n: int) -> bytes:
    """Executable-like: runs of zeros and repeated tables between random sections."""
    out = bytearray()
    while len(out) < n:
        kind = rng.random()
        size = rng.randint(512, 16384)
        if kind < 0.25:
            out += bytes(size)
        elif kind < 0.45:
            out += rng.randbytes(64) * (size // 64)
        else:
            out += rng.randbytes(size)
    return bytes(out[:n])


def generate(root: Path, size_mib: int, seed: int) -> None:
    """About ``size_mib`` MiB: 25 % text/logs, 15 % small source files, 20 % binaries,
    25 % already-compressed media, 15 % a few large files (disk-image-like, database)."""
    rng = random.Random(seed)
    total = size_mib * 2**20
    root.mkdir(parents=True)
    n_small = max(200, round(20_000 * size_mib / 1024))
    small_budget = int(total * 0.15)
    for i in range(n_small):
        folder = root / "src" / f"project{i % 40:02d}" / f"pkg{(i // 40) % 25:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"module{i}.py").write_bytes(
            _code(rng, max(200, int(rng.expovariate(n_small / small_budget))))
        )
    for i in range(max(4, size_mib // 16)):  # vendored copies: whole-file duplicates
        src = root / "src" / f"project{i % 40:02d}" / f"pkg{(i // 40) % 25:02d}"
        dst = root / "vendor" / f"copy{i}"
        shutil.copytree(src, dst)
    _spread(root / "var" / "log", "log", int(total * 0.25), rng, _text, 2 * 2**20)
    _spread(root / "usr" / "bin", "bin", int(total * 0.20), rng, _binary, 4 * 2**20)
    _spread(root / "home" / "media", "jpg", int(total * 0.25), rng, lambda r, n: r.randbytes(n), 8 * 2**20)
    big = root / "data"
    big.mkdir()
    share = int(total * 0.15) // 2
    (big / "disk.img").write_bytes(
        b"".join(_binary(rng, 2**20) if k % 3 else bytes(2**20) for k in range(max(1, share // 2**20)))
    )
    (big / "app.db").write_bytes(_text(rng, share))


def _spread(
    folder: Path,
    ext: str,
    budget: int,
    rng: random.Random,
    make: Callable[[random.Random, int], bytes],
    mean: int,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    while budget > 0:
        size = min(budget, max(4096, int(rng.expovariate(1 / mean))))
        (folder / f"file{n:05d}.{ext}").write_bytes(make(rng, size))
        budget -= size
        n += 1


def mutate(root: Path, seed: int, fraction: float = 0.02) -> int:
    """Day 2: ~``fraction`` of the bytes change. Returns bytes touched."""
    rng = random.Random(seed + 1)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    budget = int(total * fraction)
    touched = 0
    for log in [p for p in files if p.suffix == ".log"][:: max(1, len(files) // 400)]:  # appends
        with open(log, "ab") as fh:
            data = _text(rng, 16 * 1024)
            fh.write(data)
            touched += len(data)
    with open(root / "data" / "app.db", "r+b") as fh:  # in-place rewrites in a large file
        size = os.fstat(fh.fileno()).st_size
        for _ in range(max(1, budget // 4 // 65536)):
            fh.seek(rng.randrange(0, max(1, size - 65536)))
            fh.write(_text(rng, 65536))
            touched += 65536
    small = [p for p in files if p.suffix == ".py"]
    for p in rng.sample(small, min(len(small), max(10, len(small) // 100))):  # edits to source files
        p.write_bytes(p.read_bytes() + b"\n# edited\n")
        touched += 10
    for p in rng.sample(files, max(1, len(files) // 200)):  # deletes
        if p.exists():
            p.unlink()
    new = root / "home" / "new-day2"
    new.mkdir(parents=True, exist_ok=True)
    remaining = max(0, budget - touched)
    for i in range(20):  # adds
        (new / f"added{i}.bin").write_bytes(_binary(rng, remaining // 20 + 1))
        touched += remaining // 20 + 1
    return touched


# -- running tools --------------------------------------------------------------------------


@dataclass
class Measure:
    seconds: float
    max_rss_mib: float
    # user + system CPU seconds: on a loaded shared machine wall time stretches with everyone
    # else's work, CPU time much less so
    cpu: float = 0.0
    system: float = 0.0  # the kernel's part of ``cpu``: where a restore's run-to-run spread lives
    # the peak of all the tool's processes together (``TreeMemory``); ``max_rss_mib`` is the
    # largest one alone
    pss_mib: float = 0.0


class TreeMemory:
    """The peak of the summed PSS of a process's descendants (and of the process ``itself``),
    sampled every ``INTERVAL_S``.

    GNU time's %M is the largest single process (``ru_maxrss`` of the waited children), so a
    tool that runs worker processes (cloudkeep's restore worker, its backup workers) showed its
    largest process, not what it holds. A sum of RSS would count the shared libraries once per
    process; PSS divides each shared page among the processes mapping it.
    Sampled, so a spike shorter than the interval can be missed, for every tool alike; 0 where
    ``/proc`` has no ``smaps_rollup`` or ``children`` (then only the RSS row means anything)."""

    INTERVAL_S = 0.02

    def __init__(self, pid: int, *, itself: bool) -> None:
        self.pid, self.itself, self.peak_kib = pid, itself, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, name="bench-pss", daemon=True)
        self.thread.start()

    def stop(self) -> float:
        """The peak in MiB (the process has ended)."""
        self.done.set()
        self.thread.join()
        return self.peak_kib / 1024

    def _sample(self) -> None:
        while not self.done.wait(self.INTERVAL_S):
            pids = _descendants(self.pid) + ([self.pid] if self.itself else [])
            self.peak_kib = max(self.peak_kib, sum(_pss_kib(pid) for pid in pids))


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass  # ended between the listing and the read
    return 0


def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Measure:
    """Run a tool; peak RSS comes from GNU time, a small parent: Linux carries a process's
    max RSS across exec, so a child forked from this (large) bench process would report ours.

    Dirty pages are flushed first: otherwise the first fsync of whichever tool runs next waits
    for the generator's (or the previous step's) gigabyte to reach the disk (ext4 ordered mode).
    """
    os.sync()
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        timed = (
            ["/usr/bin/time", "-f", "%U %S\n%M", "-o", rss.name, *argv]
            if os.path.exists("/usr/bin/time")
            else argv
        )
        start = time.monotonic()
        pipe, joined = subprocess.PIPE, subprocess.STDOUT
        with subprocess.Popen(timed, env=env, cwd=cwd, stdout=pipe, stderr=joined) as proc:
            memory = TreeMemory(proc.pid, itself=timed is argv)  # not GNU time's own pages
            output, _ = proc.communicate()
        elapsed = time.monotonic() - start
        pss_mib = memory.stop()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{output.decode(errors='replace')[-3000:]}")
        text = rss.read().strip().splitlines()
        max_rss_kib = int(text[-1]) if text and text[-1].isdigit() else 0
        times = [float(t) for t in text[-2].split()] if len(text) >= 2 else []
    return Measure(elapsed, max_rss_kib / 1024, sum(times), times[1] if len(times) == 2 else 0.0, pss_mib)


def spread_folder(folder: Path) -> Path:
    """``folder`` made with ext4's top-directory hint, so each restore target below it gets a block
    group of its own (Orlov), not the one the whole of /tmp shares.

    This ext4 has no journal: then every new inode skips the free inodes of its group deleted in
    the last 60 s (360 s while their table block is dirty), each skip a buffer lookup, from the
    group's start every time (``recently_deleted``). Seven sessions deleting test trees under /tmp
    made the same restore's system time 1.8 s or 7 s. This lowers the odds, it does not remove
    them: Orlov prefers groups with many free inodes, which a tree deleted a minute ago leaves
    (bench/README.md, restore4). Best effort: without ``chattr`` the folder is plain.
    """
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chattr", "+T", str(folder)], capture_output=True, check=False)
    return folder


@dataclass
class Results:
    tool: str
    backend: str
    steps: dict[str, Measure] = field(default_factory=dict)
    repo_bytes: int = 0

    @property
    def peak_rss(self) -> float:
        return max(m.max_rss_mib for m in self.steps.values())

    @property
    def peak_pss(self) -> float:
        return max(m.pss_mib for m in self.steps.values())


class Tool:
    name = ""

    def init(self) -> None:
        raise NotImplementedError

    def backup(self) -> list[str]:
        raise NotImplementedError

    def restore(self, target: Path) -> list[str]:
        raise NotImplementedError

    def repo_size(self) -> int:
        raise NotImplementedError

    def warm(self) -> list[str]:
        """A command that reads the tool's own program files, not the data (``--cold``)."""
        raise NotImplementedError

    env: dict[str, str] = {}


class Cloudkeep(Tool):
    name = "cloudkeep"

    def __init__(self, url: str, options: dict[str, str], source: Path, work: Path, fmt: int) -> None:
        self.url, self.options, self.source, self.work = url, options, source, work
        self.format = fmt
        # Bytecode as an installed agent has it (pip compiles a wheel's modules at install): with
        # PYTHONDONTWRITEBYTECODE set, as in some shells, every child compiled cloudkeep's sources
        # again (~0.1 s of CPU per run). Kept in the work folder, compiled untimed by ``init``.
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        self.src_root = ROOT / "src"

    def _cmd(self, *args: str) -> list[str]:
        return [
            sys.executable,
            __file__,
            "_ck",
            json.dumps({"url": self.url, "options": self.options}),
            *args,
        ]

    def init(self) -> None:
        run([sys.executable, "-m", "compileall", "-q", str(self.src_root)], self.env)
        run(self._cmd("init", str(self.format), str(self.work / "ck-cache")), self.env)

    def backup(self) -> list[str]:
        return self._cmd("backup", str(self.source), str(self.work / "ck-cache"))

    def restore(self, target: Path) -> list[str]:
        return self._cmd("restore", str(target), str(self.work / "ck-cache"))

    def warm(self) -> list[str]:
        return self._cmd("warm")


class Restic(Tool):
    name = "restic"

    def __init__(self, repo: str, env: dict[str, str], source: Path, work: Path) -> None:
        self.source, self.work = source, work
        self.env = {**os.environ, **env, "RESTIC_REPOSITORY": repo, "RESTIC_PASSWORD": PASSWORD}

    def init(self) -> None:
        run(["restic", "init", "--cache-dir", str(self.work / "restic-cache")], self.env)

    def backup(self) -> list[str]:
        return ["restic", "backup", "-q", "--cache-dir", str(self.work / "restic-cache"), str(self.source)]

    def warm(self) -> list[str]:
        return ["restic", "version"]

    def restore(self, target: Path) -> list[str]:
        return [
            "restic",
            "restore",
            "latest",
            "-q",
            "--cache-dir",
            str(self.work / "restic-cache"),
            "--target",
            str(target),
        ]


class Borg(Tool):
    name = "borg"

    def __init__(self, repo: Path, source: Path, work: Path) -> None:
        self.repo, self.source, self.work, self.n = repo, source, work, 0
        self.env = {
            **os.environ,
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_CACHE_DIR": str(work / "borg-cache"),
            "BORG_BASE_DIR": str(work / "borg-base"),
        }

    def init(self) -> None:
        run(["borg", "init", "-e", "repokey-blake2", str(self.repo)], self.env)

    def backup(self) -> list[str]:
        self.n += 1
        return ["borg", "create", "-C", "zstd,3", f"{self.repo}::a{self.n}", str(self.source)]

    def restore(self, target: Path) -> list[str]:
        target.mkdir(parents=True, exist_ok=True)
        return ["borg", "extract", f"{self.repo}::a{self.n}"]

    def warm(self) -> list[str]:
        return ["borg", "--version"]


def measure(
    tool: Tool,
    backend: str,
    source: Path,
    work: Path,
    seed: int,
    size_of: Callable[[], int],
    corpus: str = "synthetic",
    cold: bool = False,
) -> Results:
    res = Results(tool.name, backend)
    tool.init()
    before = (lambda: _cold_cache(tool)) if cold else (lambda: None)
    before()
    res.steps["first backup"] = run(tool.backup(), tool.env)
    before()
    res.steps["no-change rerun"] = run(tool.backup(), tool.env)
    _mutated(source, seed, corpus)
    before()
    res.steps["incremental"] = run(tool.backup(), tool.env)
    target = spread_folder(work / "restored") / f"restore-{tool.name}-{backend}"
    before()
    res.steps["full restore"] = run(
        tool.restore(target), tool.env, cwd=target if isinstance(tool, Borg) else None
    )
    _verify(source, target)
    shutil.rmtree(target, ignore_errors=True)
    res.repo_bytes = size_of()
    return res


def _mutated(source: Path, seed: int, corpus: str = "synthetic") -> None:
    """Apply the day-2 mutation (the source is regenerated per tool, so each sees the same days)."""
    if corpus == "synthetic":
        mutate(source, seed)
    else:
        corpora.mutate(source, seed)


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def _cold_cache(tool: Tool) -> None:
    """``--cold``: the page cache emptied (the source tree, the local repository, the caches), then
    the tool's own program read back in: a machine's daily backup finds its files out of the
    cache, while the backup program (an agent, a binary run every day) is still in it."""
    _drop_caches()
    subprocess.run(tool.warm(), env=tool.env, check=True, capture_output=True)


def _drop_caches() -> None:
    os.sync()
    DROP_CACHES.write_text("3")


def _room_in_memory() -> None:
    """Before each tool's run (its source not yet copied), where the bench may: the page cache
    emptied. Filled by earlier runs (each writes ~2 GiB: its source, repository and restore), it
    left allocations to reclaim pages themselves, as system time of whoever allocated: the same
    local restore took 1.1 or 7.4 s of it, in turns with restic, with 19 GiB of 24 cached (no stall
    after emptying it; bench/README.md, stop 45). The source is copied, and each tool's program
    read by its untimed ``init``, after this."""
    if os.access(DROP_CACHES, os.W_OK):
        _drop_caches()


def _verify(source: Path, target: Path) -> None:
    restored = target / str(source).lstrip("/")
    diff = subprocess.run(
        ["diff", "-rq", "--no-dereference", str(source), str(restored)], capture_output=True
    )
    if diff.returncode != 0:
        raise RuntimeError(f"restore differs from source:\n{diff.stdout.decode()[-2000:]}")


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- moto -----------------------------------------------------------------------------------


def start_loopback(
    argv: Callable[[int], list[str]], what: str, *, quiet: bool = True
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``argv(port)`` on a free loopback port (its own session, so it can be killed as a
    group); its process and URL once it accepts connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    output = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(argv(port), stdout=output, stderr=output, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not start")


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    return start_loopback(
        lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], "moto server"
    )


def s3_size(endpoint: str, bucket: str) -> int:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        total += sum(o["Size"] for o in page.get("Contents", []))
    return total


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    ).create_bucket(Bucket=bucket)


# -- cloudkeep child process ----------------------------------------------------------------


def cloudkeep_child(spec: str, op: str, *args: str) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from cloudkeep.heap import limit_heap_fragmentation

    limit_heap_fragmentation()  # first, as the product's entry points (``cloudkeep``, the agent)
    from cloudkeep.repo import Repository, backup_files, list_snapshots, restore
    from cloudkeep.storage import open_store

    cfg = json.loads(spec)
    store = open_store(cfg["url"], **cfg["options"])
    if op == "init":  # as ``restic init --cache-dir``: the key file written is kept there too
        Repository.create(
            store, PASSWORD, version=int(args[0]), cache_dir=Path(args[1]) if args[1:] else None
        )
        return
    if op == "warm":  # the program's files (and botocore's models, on S3) read; no key derived
        list(store.list("keys/"))
        return
    # Like restic's --cache-dir: the file cache and (on S3) the index files kept between runs.
    repo = Repository.open(store, PASSWORD, cache_dir=Path(args[1]))
    if op == "backup":
        backup_files(repo, [Path(args[0])], hostname="bench", cache_dir=Path(args[1]))
    elif op == "restore":
        restore(repo, list_snapshots(repo)[-1].id, Path(args[0]))


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024, help="machine size in MiB (default 1024)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--corpus",
        choices=corpora.CORPORA,
        default="synthetic",
        help="generated machine, or a real tree copied from this machine (bench/corpora.py)",
    )
    parser.add_argument("--db", type=int, default=128, help="MiB of database-like file in real corpora")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 (moto) round")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="empty the page cache before every step, the tools' programs read back (needs root)",
    )
    parser.add_argument("--no-borg", action="store_true")
    parser.add_argument(
        "--format",
        type=int,
        choices=(2, 3),
        default=3,
        help="cloudkeep repository format (default 3: what the server creates; per-pack keys)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every tool N times, interleaved; report medians (default 1)",
    )
    args = parser.parse_args()
    if args.cold and not os.access(DROP_CACHES, os.W_OK):
        parser.error(f"--cold writes {DROP_CACHES}: run as root")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ck-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results: list[Results] = []
    moto: subprocess.Popen[bytes] | None = None
    try:
        backends = ["local"] + ([] if args.no_s3 else ["s3"])
        if not args.no_s3:
            moto, endpoint = start_moto()
        aws_env = {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        Factory = Callable[[Path, Path, int], tuple[Tool, Callable[[], int]]]
        tools: list[tuple[str, Factory]] = []
        for backend in backends:
            if backend == "local":
                tools.append(("local", lambda src, run_dir, n: _local_ck(src, run_dir, args.format)))
                tools.append(("local", _local_restic))
                if not args.no_borg and shutil.which("borg"):
                    tools.append(("local", _local_borg))
            else:
                tools.append(("s3", lambda src, run_dir, n: _s3_ck(src, run_dir, endpoint, n, args.format)))
                tools.append(("s3", lambda src, run_dir, n: _s3_restic(src, run_dir, endpoint, aws_env, n)))
        for stale in work.glob("run[0-9]*"):  # an interrupted run's repositories: init would find them made
            shutil.rmtree(stale)
        for n in range(args.repeat):  # tools take turns, so slow spells of a shared machine hit all alike
            # ...and each repeat starts with another tool: whoever runs right after a big deletion
            # pays for it (ext4 scans recently deleted inodes when many files are created).
            for backend, factory in tools[n % len(tools) :] + tools[: n % len(tools)]:
                source = work / "machine"
                shutil.rmtree(source, ignore_errors=True)
                _room_in_memory()
                t = time.monotonic()
                if args.corpus == "synthetic":
                    generate(source, args.size, args.seed)  # identical day-1 data for every tool
                else:  # built once, copied for each tool (times kept: identical day 1)
                    pristine = work / f"pristine-{args.corpus}"
                    if not pristine.exists():
                        corpora.build(args.corpus, pristine, args.size, args.seed, args.db)
                    shutil.copytree(pristine, source, symlinks=True)
                print(f"generated {du(source) / 2**20:.0f} MiB in {time.monotonic() - t:.1f}s", flush=True)
                run_dir = work / f"run{n}"
                run_dir.mkdir(exist_ok=True)
                tool, size_of = factory(source, run_dir, n)
                # The copy (and the deletions before it) reach the disk before the clock starts: on
                # this machine a fresh 560 MiB tree left ~0.6 s of writeback (`sync` after `cp -a`),
                # which ran on the two cores during the first backup of whichever tool came next.
                os.sync()
                res = measure(tool, backend, source, run_dir, args.seed, size_of, args.corpus, args.cold)
                results.append(res)
                print(_row(res), flush=True)
            shutil.rmtree(work / f"run{n}", ignore_errors=True)  # ~0.8 GiB per tool and backend
    finally:
        if moto is not None:
            os.killpg(moto.pid, signal.SIGTERM)
            moto.wait(timeout=10)
    report(medians(results), args.size, args.repeat, args.corpus, args.cold)
    (work / "results.json").write_text(json.dumps([_as_json(r) for r in results], indent=2))
    print(f"results: {work / 'results.json'}")


def medians(results: list[Results]) -> list[Results]:
    """One result per tool and backend: the median of its runs, figure by figure."""
    merged: list[Results] = []
    for key in dict.fromkeys((r.tool, r.backend) for r in results):
        runs = [r for r in results if (r.tool, r.backend) == key]
        steps = {
            step: Measure(
                statistics.median(r.steps[step].seconds for r in runs),
                statistics.median(r.steps[step].max_rss_mib for r in runs),
                statistics.median(r.steps[step].cpu for r in runs),
                pss_mib=statistics.median(r.steps[step].pss_mib for r in runs),
            )
            for step in runs[0].steps
        }
        merged.append(Results(*key, steps, int(statistics.median(r.repo_bytes for r in runs))))
    return merged


def _local_ck(src: Path, work: Path, fmt: int) -> tuple[Tool, Callable[[], int]]:
    repo = work / "ck-repo"
    return Cloudkeep(f"file://{repo}", {}, src, work, fmt), lambda: du(repo)


def _local_restic(src: Path, work: Path, n: int) -> tuple[Tool, Callable[[], int]]:
    repo = work / "restic-repo"
    return Restic(str(repo), {}, src, work), lambda: du(repo)


def _local_borg(src: Path, work: Path, n: int) -> tuple[Tool, Callable[[], int]]:
    repo = work / "borg-repo"
    return Borg(repo, src, work), lambda: du(repo)


def _s3_ck(src: Path, work: Path, endpoint: str, n: int, fmt: int) -> tuple[Tool, Callable[[], int]]:
    bucket = f"ck-bench-{n}"
    make_bucket(endpoint, bucket)
    opts = {
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "aws_access_key_id": "bench",
        "aws_secret_access_key": "bench",
    }
    return Cloudkeep(f"s3://{bucket}/repo", opts, src, work, fmt), lambda: s3_size(endpoint, bucket)


def _s3_restic(
    src: Path, work: Path, endpoint: str, env: dict[str, str], n: int
) -> tuple[Tool, Callable[[], int]]:
    bucket = f"restic-bench-{n}"
    make_bucket(endpoint, bucket)
    return Restic(f"s3:{endpoint}/{bucket}/repo", env, src, work), lambda: s3_size(endpoint, bucket)


def _row(r: Results) -> str:
    steps = "  ".join(f"{k}={m.seconds:.2f}s (cpu {m.cpu:.2f}s)" for k, m in r.steps.items())
    return (
        f"{r.tool:9} {r.backend:5} {steps}  repo={r.repo_bytes / 2**20:.1f}MiB  peakRSS={r.peak_rss:.0f}MiB"
        f"  peakPSS(all)={r.peak_pss:.0f}MiB"
    )


def _as_json(r: Results) -> dict[str, object]:
    return {
        "tool": r.tool,
        "backend": r.backend,
        "repo_bytes": r.repo_bytes,
        "peak_rss_mib": r.peak_rss,
        "peak_pss_all_mib": r.peak_pss,
        "steps": {
            k: {
                "seconds": m.seconds,
                "max_rss_mib": m.max_rss_mib,
                "pss_all_mib": m.pss_mib,
                "cpu_seconds": m.cpu,
            }
            for k, m in r.steps.items()
        },
    }


def report(
    results: list[Results], size: int, repeat: int = 1, corpus: str = "synthetic", cold: bool = False
) -> None:
    runs = f", medians of {repeat} interleaved runs" if repeat > 1 else ""
    cache = ", page cache emptied before every step" if cold else ""
    print(
        f"\n== {corpus} corpus, {size} MiB{runs}{cache}: other tool / cloudkeep",
        "(above 1.00 = cloudkeep better)",
    )
    for backend in ("local", "s3"):
        ck = next((r for r in results if r.tool == "cloudkeep" and r.backend == backend), None)
        if ck is None:
            continue
        for other in (r for r in results if r.tool != "cloudkeep" and r.backend == backend):
            print(f"-- {backend}: {other.tool} vs cloudkeep")
            for step, m in ck.steps.items():
                o = other.steps[step]
                ratio = o.seconds / m.seconds if m.seconds else float("nan")
                cpu_ratio = o.cpu / m.cpu if m.cpu else float("nan")
                print(
                    f"   {step:16} {other.tool} {o.seconds:7.2f}s  "
                    f"cloudkeep {m.seconds:7.2f}s  ratio {ratio:5.2f}  "
                    f"(cpu {o.cpu:6.2f}s vs {m.cpu:6.2f}s: {cpu_ratio:5.2f})"
                )
            print(
                f"   {'repository size':16} {other.tool} {other.repo_bytes / 2**20:7.1f}M  cloudkeep "
                f"{ck.repo_bytes / 2**20:7.1f}M  ratio {other.repo_bytes / max(1, ck.repo_bytes):5.2f}"
            )
            print(
                f"   {'peak RSS':16} {other.tool} {other.peak_rss:7.0f}M  cloudkeep {ck.peak_rss:7.0f}M  "
                f"ratio {other.peak_rss / max(1, ck.peak_rss):5.2f}  (largest process)"
            )
            print(
                f"   {'peak PSS, all':16} {other.tool} {other.peak_pss:7.0f}M  "
                f"cloudkeep {ck.peak_pss:7.0f}M  ratio {other.peak_pss / max(1, ck.peak_pss):5.2f}  "
                "(every process together, sampled)"
            )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_ck":
        cloudkeep_child(*sys.argv[2:])
        # As the product's entry points end (``cloudkeep``, ``python -m cloudkeep.machine``).
        from cloudkeep.exiting import skip_exit_collection

        skip_exit_collection()
    else:
        main()
