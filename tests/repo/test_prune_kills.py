"""SIGKILL at every step boundary of prune and of backup, and a randomized soak of concurrent
writers, prunes and kills: no committed restore point ever loses data.

Real processes on a local-folder repository (the in-memory store is per process). The kill tests
inject prune's ``now`` on the store's clock; the soak runs on real time with the session lease
and heartbeat scaled down (its assertions hold whatever the timing: only how much gets swept
depends on it).
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from cloudkeep.repo import list_snapshots, prune
from cloudkeep.repo.steps import BACKUP_STEPS, PRUNE_STEPS
from cloudkeep.storage import open_store
from tests.repo.conftest import PASSWORD
from tests.repo.prune_world import HOUR, KIB, World, blob, store_now, write_files
from tests.repo.test_prune_safety import agent_source, prepared, settle

_KILLED = """
import os, signal, sys
from datetime import datetime
from pathlib import Path
from cloudkeep.repo import Repository, backup_files, prune
from cloudkeep.repo.steps import hooked
from cloudkeep.storage import open_store

url, password, actor, target, now, source = sys.argv[1:7]

def kill_at(name):
    if name == target:
        os.kill(os.getpid(), signal.SIGKILL)

repo = Repository.open(open_store(url), password)
with hooked(kill_at):
    if actor == "prune":
        prune(repo, now=datetime.fromisoformat(now))
    else:
        backup_files(repo, [Path(source)], hostname="killed", threads=1)
print("finished", flush=True)
"""


@dataclass
class Template:
    """A prepared repository folder, copied for each kill point (setting it up once is faster)."""

    root: Path
    t0: datetime
    ids: dict[str, str]
    expected: dict[str, dict[str, str]] = field(default_factory=dict)

    def world(self, where: Path) -> World:
        shutil.copytree(self.root / "repo", where / "repo")
        shutil.copytree(self.root / "src", where / "src")
        world = World(open_store(f"file://{where / 'repo'}"), where / "src", create=False)
        world.expected = dict(self.expected)
        return world


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    root = tmp_path_factory.mktemp("template")
    store = open_store(f"file://{root / 'repo'}")
    world = World(store, root / "src")
    (root / "src").mkdir()
    t0, ids = prepared(world, root / "src")
    world.backup(write_files(root / "src" / "C", {"c5": blob(15, 60 * KIB)}))
    world.forget(ids["c"])  # the prune under test sweeps A's packs, repacks and marks C's
    agent_source(root / "src")
    return Template(root, t0, ids, world.expected)


def run_killed(world: World, actor: str, target: str, now: datetime) -> int:
    child = subprocess.run(
        [sys.executable, "-c", _KILLED, world.store.describe(), PASSWORD, actor, target, now.isoformat(),
         str(world.root / "B")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode in (0, -signal.SIGKILL), child.stderr
    return child.returncode


def adopt_killed_backup(world: World) -> None:
    """A backup killed after its manifest was stored committed it: it must restore like any other."""
    for snap in list_snapshots(world.open()):
        if snap.hostname == "killed" and snap.id not in world.expected:
            world.record(snap.id, world.root / "B")


@pytest.mark.slow
@pytest.mark.parametrize("target", PRUNE_STEPS)
def test_prune_killed_at_every_step(template: Template, tmp_path: Path, target: str) -> None:
    world = template.world(tmp_path)
    assert run_killed(world, "prune", target, template.t0 + 2 * HOUR) == -signal.SIGKILL
    world.verify()  # right after the kill, before any other prune
    settle(world, template.t0, (4, 6, 8))  # the next prunes complete its work (lock taken over)


@pytest.mark.slow
@pytest.mark.parametrize("target", BACKUP_STEPS)
def test_backup_killed_at_every_step(template: Template, tmp_path: Path, target: str) -> None:
    world = template.world(tmp_path)
    assert run_killed(world, "backup", target, template.t0) == -signal.SIGKILL
    adopt_killed_backup(world)
    world.verify()
    settle(world, template.t0, (2, 4, 6))  # its session goes stale; its leftovers are collected


_WRITER = """
import hashlib, json, random, sys
from pathlib import Path
import cloudkeep.repo.writer as session
from cloudkeep.repo import Repository, backup_files
from cloudkeep.storage import open_store

url, password, name, folder, seed, lease = sys.argv[1:7]
session.SESSION_LEASE_S, session.HEARTBEAT_S = float(lease), float(lease) / 5
rng, folder = random.Random(int(seed)), Path(folder)
folder.mkdir(parents=True, exist_ok=True)
store = open_store(url)
while True:
    for _ in range(rng.randint(1, 3)):  # shared seeds: writers deduplicate against each other
        size = rng.randint(8, 160) * 1024
        (folder / f"f{rng.randint(0, 5)}").write_bytes(random.Random(rng.randint(0, 40)).randbytes(size))
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    try:
        snap = backup_files(Repository.open(store, password), [folder], hostname=name, threads=1)
        print(json.dumps({"id": snap.id, "files": files}), flush=True)
    except session.SessionExpiredError:
        print(json.dumps({"expired": True}), flush=True)
"""

_PRUNER = """
import sys
from datetime import timedelta
import cloudkeep.repo.writer as session
from cloudkeep.errors import ConflictError
from cloudkeep.repo import Repository, RetentionPolicy, forget, prune
from cloudkeep.storage import open_store

url, password, lease = sys.argv[1:4]
session.SESSION_LEASE_S = float(lease)
store = open_store(url)
while True:
    repo = Repository.open(store, password)
    forget(repo, RetentionPolicy(keep_last=2))
    try:
        result = prune(repo, grace=timedelta(seconds=2 * float(lease)))
        print(f"pruned {result.packs_deleted}", flush=True)
    except ConflictError:
        print("locked", flush=True)
"""


class Actor:
    """A child process whose stdout lines are collected by a reader thread."""

    def __init__(self, script: str, args: list[str], lines: queue.Queue[tuple[str, str]], name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.reader = threading.Thread(target=self._read, args=(lines,), daemon=True)
        self.reader.start()

    def _read(self, lines: queue.Queue[tuple[str, str]]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            lines.put((self.name, line.strip()))

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL, self.proc.stderr.read() if self.proc.stderr else ""


def drain(lines: queue.Queue[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    while True:
        try:
            yield lines.get_nowait()
        except queue.Empty:
            return


@pytest.mark.slow
def test_soak_concurrent_writers_prunes_and_kills(tmp_path: Path) -> None:
    seed, duration, lease = 20261201, 12.0, 0.5
    rng = random.Random(seed)
    world = World(open_store(f"file://{tmp_path / 'repo'}"), tmp_path)
    url = world.store.describe()
    lines: queue.Queue[tuple[str, str]] = queue.Queue()
    counts = {"kills": 0, "committed": 0, "expired": 0, "prunes": 0, "locked": 0, "deleted": 0}

    def start(name: str) -> Actor:
        """The pruner, or one of two machines (each with its own source folder, restarted when killed)."""
        if name == "pruner":
            return Actor(_PRUNER, [url, PASSWORD, str(lease)], lines, name)
        return Actor(_WRITER, [url, PASSWORD, name, str(tmp_path / name), str(rng.randint(0, 10**6)),
                               str(lease)], lines, name)  # fmt: skip

    actors = {name: start(name) for name in ("w0", "w1", "pruner")}
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 1.5))  # pacing the kills, not waiting for state
        slot = rng.choice(["w0", "w0", "w1", "w1", "pruner"])  # a prune needs a while to sweep
        actors[slot].kill()
        counts["kills"] += 1
        actors[slot] = start(slot)
    for actor in actors.values():
        actor.kill()
    for name, line in drain(lines):
        if line.startswith("{"):
            event = json.loads(line)
            if "id" in event:
                counts["committed"] += 1
                world.expected[event["id"]] = {f"{name}/{k}": v for k, v in event["files"].items()}
            else:
                counts["expired"] += 1
        elif line.startswith("pruned"):
            counts["prunes"] += 1
            counts["deleted"] += int(line.split()[1])
        elif line == "locked":
            counts["locked"] += 1
    print("soak:", counts)
    assert counts["committed"] > 0 and counts["prunes"] > 0
    world.verify()
    t0 = store_now(world.store)
    for h in (2, 4, 6):  # every killed session and prune is stale by now: complete their work
        prune(world.open(), now=t0 + h * HOUR)
    world.verify()
    world.backup(tmp_path / "w0", hostname="after")
    world.verify()
