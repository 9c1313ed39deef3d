"""The machine's retention task forgets what the server decided, and only within its own scope.

A signed command still names restore points from outside the machine: an id of another writer
(or of another backup set of this writer) makes the machine refuse the whole list, forgetting
nothing. The store here is a local folder opened *without* write-prefix enforcement — like an
Azure container SAS or moto, which do not confine a writer — so only the machine's own check
stands between the list and the other writer's restore points.

The task is called in-process with a TaskContext whose repository access is that folder.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from cloudkeep.errors import ConfigurationError, PermissionDeniedError
from cloudkeep.machine import tasks
from cloudkeep.machine.config import MachineConfig
from cloudkeep.machine.handlers import TaskContext
from cloudkeep.protocol import RepositoryAccess
from cloudkeep.protocol.bodies import Retention, RetentionCommand
from cloudkeep.repo import KdfParams, Repository, Snapshot, backup_files, list_snapshots
from cloudkeep.storage import open_store

PASSWORD = "machine side"
A, B = "writers/machine-a/", "writers/machine-b/"


class Lab:
    def __init__(self, tmp_path: Path) -> None:
        self.url = f"file://{tmp_path / 'repo'}"
        self.source = tmp_path / "src"
        self.source.mkdir()
        (self.source / "f").write_text("x")
        Repository.create(open_store(self.url, fsync=False), PASSWORD, kdf=KdfParams(n=2**10)).close()
        self.root = tmp_path / "root"
        self.root.mkdir()

    def backup(self, writer: str | None, hostname: str, retain_until: datetime | None = None) -> Snapshot:
        repo = Repository.open(open_store(self.url, fsync=False), PASSWORD, writer_prefix=writer)
        return backup_files(repo, [self.source], hostname=hostname, retain_until=retain_until)

    def ids(self) -> set[str]:
        return {s.id for s in list_snapshots(Repository.open(open_store(self.url, fsync=False), PASSWORD))}

    def context(self, writer: str | None, machine_id: str = "m1") -> TaskContext:
        """``writer`` None: the full credential the server gives a retention command that prunes."""
        ids = {"machine_id": machine_id, "server_id": "s1", "server_public_key": ""}
        config = MachineConfig(**ids, agent_queue={}, server_queue={}, root=self.root)
        access = RepositoryAccess(
            store_url=self.url, options={"fsync": False}, password=PASSWORD, writer_prefix=writer
        )
        # keys/envelope only open the sealed access, which ``refreshed_access`` replaces here
        return TaskContext(config=config, keys=None, envelope=None, refreshed_access=lambda: access)  # type: ignore[arg-type]


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


def test_forgets_exactly_the_listed_points_of_its_backup_set(lab: Lab) -> None:
    a1, a2, a3 = (lab.backup(A, "set-a") for _ in range(3))
    b1 = lab.backup(B, "set-b")
    body = RetentionCommand(forget=[a1.id, a2.id], hostname="set-a")
    result = tasks.retention(lab.context(A), body)
    assert result == {"kept": [], "removed": [a1.id, a2.id]}
    assert lab.ids() == {a3.id, b1.id}  # the machine did not decide again (no policy: a3 stays)
    # a retried command: what is already gone counts as removed, nothing else happens
    assert tasks.retention(lab.context(A), body)["removed"] == [a1.id, a2.id]
    assert lab.ids() == {a3.id, b1.id}


def test_refuses_a_list_naming_another_writers_point_and_forgets_nothing(lab: Lab) -> None:
    a1, a2 = lab.backup(A, "set"), lab.backup(A, "set")
    b1 = lab.backup(B, "set")  # same backup-set name: only the writer scope tells them apart
    with pytest.raises(PermissionDeniedError, match="another writer"):
        tasks.retention(lab.context(A), RetentionCommand(forget=[a1.id, b1.id], hostname="set"))
    assert lab.ids() == {a1.id, a2.id, b1.id}


def test_with_the_full_credential_the_scope_is_still_this_machines_namespace(lab: Lab) -> None:
    legacy = lab.backup(None, "set")  # the root layout, written before writer namespaces
    a1, a2 = lab.backup(A, "set"), lab.backup(A, "set")
    b1 = lab.backup(B, "set")
    full = lab.context(None, machine_id="machine-a")
    with pytest.raises(PermissionDeniedError, match="another writer"):
        tasks.retention(full, RetentionCommand(forget=[a1.id, b1.id], hostname="set"))
    assert lab.ids() == {legacy.id, a1.id, a2.id, b1.id}
    result = tasks.retention(full, RetentionCommand(forget=[legacy.id, a1.id], hostname="set"))
    assert result["removed"] == [legacy.id, a1.id] and lab.ids() == {a2.id, b1.id}


def test_refuses_a_point_of_another_backup_set_of_the_same_writer(lab: Lab) -> None:
    mine, other_job = lab.backup(A, "m1-job1"), lab.backup(A, "m1-job2")
    with pytest.raises(PermissionDeniedError, match="not one of 'm1-job1'"):
        tasks.retention(lab.context(A), RetentionCommand(forget=[mine.id, other_job.id], hostname="m1-job1"))
    assert lab.ids() == {mine.id, other_job.id}


@pytest.mark.parametrize("bad", ["../../config", "", "ab12"])
def test_refuses_a_list_with_something_that_is_no_restore_point_id(lab: Lab, bad: str) -> None:
    mine = lab.backup(A, "set")
    with pytest.raises(ConfigurationError, match="not a restore point id"):
        tasks.retention(lab.context(A), RetentionCommand(forget=[mine.id, bad], hostname="set"))
    assert lab.ids() == {mine.id}


def test_keeps_a_listed_point_still_under_retention(lab: Lab) -> None:
    locked = lab.backup(A, "set", retain_until=datetime.now(UTC) + timedelta(days=3))
    result = tasks.retention(lab.context(A), RetentionCommand(forget=[locked.id], hostname="set"))
    assert result == {"kept": [locked.id], "removed": []}
    assert lab.ids() == {locked.id}


def test_a_policy_only_command_from_an_older_server_is_planned_here(lab: Lab) -> None:
    old, new = lab.backup(A, "set"), lab.backup(A, "set")
    result = tasks.retention(lab.context(A), RetentionCommand(policy=Retention(keep_last=1), hostname="set"))
    assert result == {"kept": [new.id], "removed": [old.id]}


def test_a_command_must_say_what_to_forget() -> None:
    with pytest.raises(ValidationError, match="'forget'"):
        RetentionCommand.model_validate({"prune": True, "hostname": "set"})
    assert RetentionCommand.model_validate({"forget": [], "hostname": "set"}).forget == []
