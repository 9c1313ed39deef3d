"""A repository that refuses writes fails the machine's backup, reported as such to the server.

The repository is a real tmpfs that fills up (ENOSPC) while the agent's backup writes to it: the
server gets a failed result naming the repository and the reason — never a backup that
"succeeded with warnings" because its files looked unreadable — and after space is freed the next
backup succeeds and deduplicates.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudkeep import repo as engine
from cloudkeep.server.dispatcher import CommandFailed, Dispatcher, ensure_consumers
from cloudkeep.storage.base import open_store
from tests.machine.harness import Harness, wait_for
from tests.support.tmpfs import Tmpfs

pytestmark = pytest.mark.slow
PASSWORD = "correct horse battery staple"


def test_full_repository_fails_the_backup_with_a_clear_message(harness: Harness, tmpfs: Tmpfs) -> None:
    tmpfs.resize("3m")
    root = tmpfs.path / "repo"
    store_url = root.as_uri()
    engine.Repository.create(open_store(store_url), PASSWORD, kdf=engine.KdfParams(n=2**10), pack_size=2**20)
    access = {"store_url": store_url, "options": {}, "password": PASSWORD}
    machine = harness.add_machine("full1")
    data = machine.sim.root / "data"
    data.mkdir()
    (data / "small.bin").write_bytes(os.urandom(2**20))
    ensure_consumers(harness.ctx)
    machine.start()
    machine.start("agent")
    wait_for(lambda: harness.heartbeat_age(machine) is not None, what="first heartbeat")
    dispatcher = Dispatcher(harness.ctx)
    body = {"sources": ["/data"], "hostname": "full1"}
    first = dispatcher.call(machine.row_id, "backup", body, sealed=access, timeout=60)

    (data / "big.bin").write_bytes(os.urandom(4 * 2**20))  # more than the repository's disk has left
    command_id = dispatcher.send(machine.row_id, "backup", body, sealed=access)
    with pytest.raises(CommandFailed) as caught:
        dispatcher.wait(command_id, timeout=60)
    assert f"backup on machine {machine.row_id} failed: repository write failed: {store_url}: " in str(
        caught.value
    )
    assert "no space left" in str(caught.value)
    record = harness.record(command_id)  # what the server keeps: the task failed, and why
    assert record.state == "failed" and record.result is not None and record.result["ok"] is False
    assert str(record.result["error"]).startswith(f"repository write failed: {store_url}: ")
    repository = engine.Repository.open(open_store(store_url), PASSWORD)
    assert [s.id for s in engine.list_snapshots(repository)] == [first["snapshot_id"]]
    assert list(repository.store.list("sessions/")) == []  # the session ended
    assert engine.check(repository).ok

    tmpfs.resize("64m")
    again = dispatcher.call(machine.row_id, "backup", body, sealed=access, timeout=60)
    assert again["errors_total"] == 0 and not again["warnings"]
    assert again["stats"]["bytes_new"] <= 4 * 2**20 + 2**16  # small.bin deduplicated
    assert engine.check(engine.Repository.open(open_store(store_url), PASSWORD), read_data=True).ok


def test_read_errors_stay_warnings(harness: Harness, tmp_path: Path) -> None:
    """The other side of the line: a source file the agent cannot read is a warning, not a failure."""
    store_url = (tmp_path / "repo").as_uri()
    engine.Repository.create(open_store(store_url), PASSWORD, kdf=engine.KdfParams(n=2**10))
    access = {"store_url": store_url, "options": {}, "password": PASSWORD}
    machine = harness.add_machine("warn1")
    data = machine.sim.root / "data"
    data.mkdir()
    (data / "ok.txt").write_text("fine\n")
    ensure_consumers(harness.ctx)
    machine.start()
    machine.start("agent")
    wait_for(lambda: harness.heartbeat_age(machine) is not None, what="first heartbeat")
    dispatcher = Dispatcher(harness.ctx)
    # A source path that does not exist: a read problem on the machine, named in the warnings.
    body = {"sources": ["/data", "/missing"], "hostname": "warn1"}
    result = dispatcher.call(machine.row_id, "backup", body, sealed=access, timeout=60)
    assert result["snapshot_id"] and result["errors_total"] == 1
    assert any("/missing" in w for w in result["warnings"])
