"""Backup session markers under create-only credentials (docs/security.md, docs/format.md).

An agent can neither overwrite nor delete: each refresh is a new ``sessions/<id>.<n>`` and the
end is ``sessions/<id>.end`` (proved by a secret whose hash is in the first marker); prune, with
the full credential, removes ended and stale sessions. The stores are real folders
(``append_only`` is the local stand-in for an agent's credential).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudkeep.repo import Repository, backup_files, prune
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.storage import ObjectStore
from cloudkeep.storage.local import LocalStore
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, write_tree
from tests.support.clock import FIXED_NOW

A = "writers/machine-a/"
HOUR = timedelta(hours=1)


@pytest.fixture
def full(tmp_path: Path) -> ObjectStore:
    store = LocalStore(tmp_path / "repo", fsync=False)
    Repository.create(store, PASSWORD, pack_size=256 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    return store


@pytest.fixture
def agent(full: LocalStore) -> Repository:
    store = LocalStore(full.root, write_prefix=A, append_only=True, fsync=False)
    return Repository.open(store, PASSWORD, writer_prefix=A)


def session_keys(store: ObjectStore) -> list[str]:
    return [info.key for info in store.list(A + "sessions/")]


def test_refreshes_are_new_objects_and_the_end_is_a_marker(agent: Repository, full: ObjectStore) -> None:
    writer = BlobWriter(agent, hostname="a")
    writer.heartbeat()
    writer.heartbeat()
    first = writer.session_key
    assert session_keys(full) == [first, first + ".000001", first + ".000002"]
    writer.close()
    assert session_keys(full) == [first, first + ".000001", first + ".000002", first + ".end"]
    result = prune(Repository.open(full, PASSWORD), now=datetime.now(UTC))
    assert session_keys(full) == [] and not result.warnings  # ended: removed, not waited for


def test_a_full_credential_backup_removes_its_markers(full: ObjectStore, tmp_path: Path) -> None:
    repo = Repository.open(full, PASSWORD, writer_prefix=A)
    backup_files(repo, [write_tree(tmp_path / "src")], hostname="a")
    assert session_keys(full) == []


def test_compromised_machine_session_markers_go_stale_and_server_sweeps_them(
    agent: Repository, full: ObjectStore, tmp_path: Path
) -> None:
    """Markers that never end (a killed backup, or a machine stalling prune) hold nothing for ever."""
    t0 = datetime.now(UTC)
    writer = BlobWriter(agent, hostname="a")
    writer.heartbeat(seen=t0)
    writer.abort = lambda: None  # type: ignore[method-assign]  # killed: it never says it ended
    server = Repository.open(full, PASSWORD)
    assert prune(server, now=t0 + timedelta(minutes=50)).warnings == []
    assert len(session_keys(full)) == 2  # refreshed within grace: live, kept
    prune(server, now=t0 + 3 * HOUR)
    assert session_keys(full) == []  # stale: the server's prune removed it, first marker first
    assert writer.repo.store.stat(writer.session_key) is None
    writer._stop.set()  # the killed backup's heartbeat thread


def test_compromised_machine_cannot_end_a_session_with_a_forged_end_marker(
    agent: Repository, full: ObjectStore
) -> None:
    t0 = datetime.now(UTC)
    writer = BlobWriter(agent, hostname="a")
    forged = {"hostname": "a", "end": "0" * 32, "seen": t0.isoformat()}
    agent.write_marker(writer.session_key + ".end", forged)  # anyone holding the repository key can
    result = prune(Repository.open(full, PASSWORD), now=t0 + timedelta(minutes=5))
    assert any("does not match its session" in w for w in result.warnings)
    assert writer.session_key in session_keys(full)  # still live: nothing swept under it
    writer.heartbeat()  # and the backup goes on


def test_a_writer_dates_its_markers_by_its_own_clock(agent: Repository, full: ObjectStore) -> None:
    """A backup moved in time (``wall_clock``, as tests do) dates its markers by it, its end
    marker too, not by the machine's date."""
    when = FIXED_NOW
    writer = BlobWriter(agent, hostname="a", wall_clock=lambda: when)
    writer.heartbeat()
    writer.close()
    keys = session_keys(full)
    assert len(keys) == 3 and keys[-1].endswith(".end")
    bodies = [agent.read_marker(key) for key in keys]
    assert {body["seen"] for body in bodies} == {when.isoformat()}
    assert [body["started"] for body in bodies[:2]] == [when.isoformat()] * 2
