"""The Transport Service's restore task on a hostile restore point: nothing escapes the target
(``--target-path /target`` on a simulated machine whose root sits inside a watched folder), and
the task fails naming the refused entries instead of reporting success.

The task is called in-process with a TaskContext whose repository access is an in-memory store
(the queues and signed envelopes around it are covered by test_e2e_local / tests/server).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudkeep.errors import CloudkeepError, ConfigurationError, RestoreIncompleteError
from cloudkeep.machine import tasks
from cloudkeep.machine.config import MachineConfig
from cloudkeep.machine.handlers import TaskContext
from cloudkeep.protocol import RepositoryAccess
from cloudkeep.protocol.bodies import Restore
from cloudkeep.repo import KdfParams, Repository
from cloudkeep.storage import open_store
from cloudkeep.storage.memory import MemoryStore
from tests.support.hostile import craft, fifo, file, folder, sandbox, symlink

PASSWORD = "machine side"


@pytest.fixture
def store_url() -> Iterator[str]:
    name = "hostile-" + uuid.uuid4().hex
    yield f"memory://{name}"
    MemoryStore.forget(name)


def task_context(root: Path, store_url: str) -> TaskContext:
    config = MachineConfig(
        machine_id="m1", server_id="s1", server_public_key="", agent_queue={}, server_queue={}, root=root
    )
    access = RepositoryAccess(store_url=store_url, password=PASSWORD)
    # keys/envelope are only used to open the sealed access, which ``refreshed_access`` replaces
    return TaskContext(config=config, keys=None, envelope=None, refreshed_access=lambda: access)  # type: ignore[arg-type]


def test_transport_restore_of_a_hostile_point_fails_and_stays_in_target(
    tmp_path: Path, store_url: str
) -> None:
    outside, target, state = sandbox(tmp_path)  # target = <machine root>/target
    repo = Repository.create(open_store(store_url), PASSWORD, kdf=KdfParams(n=2**10))
    snapshot_id = craft(repo, [
        file("../../../victim.txt", b"owned\n"), file(str(outside / "abs.txt")),
        symlink("s", str(outside / "victim.txt")), fifo("s", mode=0o777),
        folder("..", [file("victim.txt", b"owned\n")]), file("good.txt", b"good\n"),
    ])  # fmt: skip
    ctx = task_context(target.parent, store_url)
    before = state()
    with pytest.raises(RestoreIncompleteError) as raised:
        tasks.restore(ctx, Restore(snapshot_id=snapshot_id, target="/target"))
    assert state() == before
    message = str(raised.value)
    assert "4 entries not restored" in message and "/../../../victim.txt" in message and "/s:" in message
    assert (target / "good.txt").read_bytes() == b"good\n"


@pytest.mark.parametrize(("target", "paths"), [("/target/../..", None), ("/target", ["/../.."])])
def test_transport_restore_refuses_climbing_targets_and_paths(
    tmp_path: Path, store_url: str, target: str, paths: list[str] | None
) -> None:
    outside, watched, state = sandbox(tmp_path)
    repo = Repository.create(open_store(store_url), PASSWORD, kdf=KdfParams(n=2**10))
    snapshot_id = craft(repo, [folder("..", [folder("..", [file("victim.txt", b"owned\n")])])])
    ctx = task_context(watched.parent, store_url)
    before = state()
    with pytest.raises((ConfigurationError, CloudkeepError), match=r"may not contain '\.\.'"):
        tasks.restore(ctx, Restore(snapshot_id=snapshot_id, target=target, paths=paths))
    assert state() == before and (outside / "victim.txt").read_text() == "original\n"
