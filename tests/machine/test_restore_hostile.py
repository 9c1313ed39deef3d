"""The Transport Service's restore task on a hostile restore point: nothing escapes the target
(``--target-path /target`` on a simulated machine whose root sits inside a watched folder), and
the task fails naming the refused entries instead of reporting success.

The task is called in-process with a TaskContext whose repository access is an in-memory store
(fast); the last test sends the same kind of restore point through the real message service and
Transport Service processes.
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
from cloudkeep.server.dispatcher import CommandFailed, Dispatcher, ensure_consumers
from cloudkeep.storage import open_store
from cloudkeep.storage.memory import MemoryStore
from tests.machine.harness import Harness, wait_for
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


@pytest.mark.slow
def test_hostile_restore_through_the_transport_service_fails_and_escapes_nothing(
    harness: Harness, tmp_path: Path
) -> None:
    """The real services: a signed ``restore`` command, the Transport Service's process, the result."""
    store_url = f"file://{tmp_path / 'repo'}"
    repo = Repository.create(open_store(store_url), PASSWORD, kdf=KdfParams(n=2**10))
    machine = harness.add_machine("hostile1")
    outside, target, state = sandbox(machine.sim.root / "w")
    snapshot_id = craft(repo, [
        file("../../../victim.txt", b"owned\n"), symlink("s", str(outside / "victim-dir")),
        folder("s", [file("planted")]), file("good.txt", b"good\n"),
    ])  # fmt: skip
    ensure_consumers(harness.ctx)
    for service in ("message-service", "transport"):
        machine.start(service)
    wait_for(lambda: harness.heartbeat_age(machine) is not None, what="first heartbeat")
    before = state()
    access = {"store_url": store_url, "options": {}, "password": PASSWORD}
    request = {"snapshot_id": snapshot_id, "target": "/" + str(target.relative_to(machine.sim.root))}
    with pytest.raises(CommandFailed, match="2 entries not restored") as raised:
        Dispatcher(harness.ctx).call(machine.row_id, "restore", request, sealed=access, timeout=60)
    assert "/../../../victim.txt" in str(raised.value) and "/s:" in str(raised.value)
    assert state() == before and (target / "good.txt").read_bytes() == b"good\n"
