"""Server-vouched packs (repo/vouch.py): what machines deduplicate against on format 3, forged
vouched files, crash safety of the vouch step, and its cost (bytes read, dedup lost within a job).

Stores are the in-memory backend (the properties are cryptographic and of ordering); a forged
vouched file written with an agent's SAS on Azurite is in tests/providers/azure/test_agent_sas.py.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cloudkeep.compat import UTC
from cloudkeep.repo import Repository, backup_files, forget_snapshots, prune, vouch
from cloudkeep.repo.confidential import WriterBundle
from cloudkeep.repo.index import encode_index_file
from cloudkeep.repo.pack import pack_key
from cloudkeep.repo.steps import VOUCH_STEPS, hooked
from cloudkeep.repo.vouch import VOUCH_PREFIX, seal_vouched, vouch_new_packs, vouched_packs
from cloudkeep.storage import ObjectStore, open_store
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS

A, B = "writers/machine-a/", "writers/machine-b/"


@pytest.fixture
def server(store: ObjectStore) -> Repository:
    return Repository.create(
        store, PASSWORD, pack_size=512 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS, version=3
    )


def machine(store: ObjectStore, server: Repository, prefix: str, *, vouch_key: bool = True) -> Repository:
    body = server.writer_bundle(prefix).to_json()
    if not vouch_key:  # a bundle from a server older than vouching
        body.pop("vouch_key")
    bundle = WriterBundle.from_json(json.loads(json.dumps(body)))
    return Repository.open_writer(store, bundle, writer_prefix=prefix)


def same_tree(root: Path, seed: int = 7) -> Path:
    """The same ~1.2 MB on every machine that calls it with one seed (an OS image, say)."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for i in range(4):
        (root / f"lib{i}.so").write_bytes(rng.randbytes(300 * 1024))
    return root


def test_a_forged_vouched_file_is_ignored_with_a_warning(
    store: ObjectStore, server: Repository, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent holds the shared key, so it can seal index records as a vouched file, and on a flat
    namespace create one; it cannot sign it. Signed for another repository does not pass either."""
    backup_files(machine(store, server, A), [same_tree(tmp_path / "a")], hostname="a")
    server.load_index()
    packs = dict(server.index.pack_entries())
    attacker = machine(store, server, A)
    records = encode_index_file(attacker.crypter, packs, aad=b"cloudkeep-vouched-v1")
    store.put(VOUCH_PREFIX + "forged", records + os.urandom(64))
    other_repo = os.urandom(32)  # a real signature, by another repository's server
    store.put(VOUCH_PREFIX + "elsewhere", seal_vouched(server.crypter, other_repo, server.id, packs, {}))
    with caplog.at_level(logging.WARNING, logger="cloudkeep.repo.vouch"):
        victim = machine(store, server, B)
    assert set(victim.unverified_vouches) == {VOUCH_PREFIX + "forged", VOUCH_PREFIX + "elsewhere"}
    assert "not signed by the server" in caplog.text and VOUCH_PREFIX + "forged" in caplog.text
    assert not any(victim.has_blob(e.id) for entries in packs.values() for e in entries)
    assert vouched_packs(server) == set()  # the server does not trust them either
    assert set(vouch_new_packs(server).vouched) == set(packs)  # and vouches for the real packs
    assert all(machine(store, server, B).has_blob(e.id) for entries in packs.values() for e in entries)


def test_a_bundle_without_the_vouch_key_trusts_only_its_own_namespace(
    store: ObjectStore, server: Repository, tmp_path: Path
) -> None:
    backup_files(machine(store, server, A), [same_tree(tmp_path / "a")], hostname="a")
    assert vouch_new_packs(server).vouched
    old = machine(store, server, B, vouch_key=False)
    assert len(old.index) == 0 and len(old.foreign) > 0 and old.unverified_vouches
    assert len(machine(store, server, B).index) == len(old.foreign)


@pytest.mark.parametrize("crash_at", ["vouch:verified", "vouch:written"])
def test_the_vouch_step_is_crash_safe_and_idempotent(
    store: ObjectStore, server: Repository, tmp_path: Path, crash_at: str
) -> None:
    """A run killed at any step (here: the process dies at the step boundary, before or after the
    one object it writes) leaves a state the next run completes, and nothing is vouched twice."""
    backup_files(machine(store, server, A), [same_tree(tmp_path / "a")], hostname="a")

    class Killed(BaseException):
        pass

    def die(name: str) -> None:
        if name == crash_at:
            raise Killed(name)

    with hooked(die), pytest.raises(Killed):
        vouch_new_packs(server)
    written = [i.key for i in store.list(VOUCH_PREFIX)]
    assert len(written) == (1 if crash_at == "vouch:written" else 0)
    rerun = vouch_new_packs(server)
    server.load_index()
    assert vouched_packs(server) == set(server.index.packs)
    assert rerun.vouched == ([] if crash_at == "vouch:written" else sorted(server.index.packs))
    assert vouch_new_packs(server).vouched == [] and vouch_new_packs(server).bytes_read == 0


def test_cost_bytes_read_and_dedup_within_one_job_versus_across_jobs(
    store: ObjectStore, server: Repository, tmp_path: Path
) -> None:
    """The price of the fix, measured: the server reads exactly the job's new packs once; two
    identical machines in one job both store the data (no dedup against an unvouched pack); a
    machine backing up the same data in a later job stores none of it."""
    first = backup_files(machine(store, server, A), [same_tree(tmp_path / "a")], hostname="a")
    same_job = backup_files(machine(store, server, B), [same_tree(tmp_path / "b")], hostname="b")
    server.load_index()
    new_bytes = sum(len(store.get(pack_key(p))) for p in server.index.packs)
    result = vouch_new_packs(server)
    assert result.bytes_read == new_bytes and not result.refused
    next_job = backup_files(
        machine(store, server, "writers/machine-c/"), [same_tree(tmp_path / "c")], hostname="c"
    )
    raw = first.stats["bytes_new"]
    ratio_same_job = 1 - same_job.stats["bytes_new"] / raw
    ratio_next_job = 1 - next_job.stats["bytes_new"] / raw
    print(  # the figures docs/security.md quotes (pytest -s)
        f"\nvouch cost: read {result.bytes_read} B for {raw} B of new data; dedup ratio of an identical "
        f"machine: same job {ratio_same_job:.2f}, next job {ratio_next_job:.2f}"
    )
    assert ratio_same_job < 0.05  # both machines stored it
    assert ratio_next_job > 0.95  # only its own (differently placed) trees are new
    assert vouch_new_packs(server).bytes_read < result.bytes_read / 10  # only machine C's trees


def test_a_pruned_pack_stays_out_of_dedup_though_a_vouched_file_still_names_it(
    store: ObjectStore, server: Repository, tmp_path: Path
) -> None:
    """Vouched files are never rewritten: index files still decide what is live."""
    first = backup_files(machine(store, server, A), [same_tree(tmp_path / "a")], hostname="a")
    assert vouch_new_packs(server).vouched
    assert machine(store, server, B).has_blob(bytes.fromhex(first.tree))
    forget_snapshots(server, [first.id])
    now = datetime.now(UTC)
    prune(server, now=now)
    assert prune(server, now=now + timedelta(hours=2)).packs_deleted > 0
    assert any(True for _ in store.list(VOUCH_PREFIX))  # still names the deleted packs
    later = machine(store, server, B)
    assert len(later.index) == 0
    again = backup_files(later, [same_tree(tmp_path / "b")], hostname="b")
    assert again.stats["bytes_new"] >= first.stats["bytes_new"] * 0.95  # stored again, not lost


def test_vouched_files_are_consolidated_and_a_crash_midway_loses_nothing(
    store: ObjectStore, server: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Machines read every vouched file at each open: every few runs one file replaces them all
    (written before the others are deleted, so a run killed between leaves duplicates only)."""
    monkeypatch.setattr(vouch, "CONSOLIDATE_AT", 3)
    trees = []
    for i in range(2):
        snap = backup_files(machine(store, server, A), [same_tree(tmp_path / f"a{i}", seed=i)], hostname="a")
        trees.append(bytes.fromhex(snap.tree))
        assert vouch_new_packs(server).vouched
    assert len(list(store.list(VOUCH_PREFIX))) == 2
    backup_files(machine(store, server, A), [same_tree(tmp_path / "a2", seed=2)], hostname="a")

    class Killed(BaseException):
        pass

    def die(name: str) -> None:
        if name == "vouch:written":
            raise Killed(name)

    with hooked(die), pytest.raises(Killed):
        vouch_new_packs(server)  # the consolidated file is stored, the old ones not yet deleted
    assert len(list(store.list(VOUCH_PREFIX))) == 3
    assert vouch_new_packs(server).vouched == []  # the next run completes it
    assert len(list(store.list(VOUCH_PREFIX))) == 1
    server.load_index()
    assert vouched_packs(server) == set(server.index.packs)
    assert all(machine(store, server, B).has_blob(tree) for tree in trees)


_KILLED = """
import os, signal, sys
from cloudkeep.repo import Repository, vouch
from cloudkeep.repo.steps import hooked
from cloudkeep.storage import open_store

url, password, target = sys.argv[1:4]
vouch.CONSOLIDATE_AT = 2  # so that every step boundary is reached

def kill_at(name):
    if name == target:
        os.kill(os.getpid(), signal.SIGKILL)

with hooked(kill_at):
    vouch.vouch_new_packs(Repository.open(open_store(url), password))
"""


@pytest.mark.parametrize("target", VOUCH_STEPS)
def test_the_vouch_step_killed_at_every_step_is_completed_by_the_next_run(
    tmp_path: Path, target: str
) -> None:
    """SIGKILL (a real process, a real file store) at each step boundary of the vouch step."""
    store = open_store(f"file://{tmp_path / 'repo'}")
    server = Repository.create(
        store, PASSWORD, pack_size=512 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS, version=3
    )
    backup_files(machine(store, server, A), [same_tree(tmp_path / "a", seed=1)], hostname="a")
    assert vouch_new_packs(server).vouched  # one file already: the killed run consolidates
    snap = backup_files(machine(store, server, A), [same_tree(tmp_path / "a2", seed=2)], hostname="a")
    child = subprocess.run(
        [sys.executable, "-c", _KILLED, store.describe(), PASSWORD, target],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    vouch_new_packs(server)  # the next run
    server.load_index()
    assert vouched_packs(server) == set(server.index.packs)
    assert machine(store, server, B).has_blob(bytes.fromhex(snap.tree))
    assert vouch_new_packs(server).bytes_read == 0
