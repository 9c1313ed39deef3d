"""Restore requests that must be refused clearly, the VHD footer, and restore sessions' bookkeeping.

Commands go to the in-process FAKE dispatcher of jobs_fakes (the real Transport Service restores
are verified byte for byte in test_jobs_e2e.py); each point has a real manifest in the repository,
which a restore request checks first; the VHD footer is checked against the published
format (cookie, sizes, CHS geometry, one's-complement checksum).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.server.jobs_fakes import FakeDispatcher, World, build_world, make_context, write_manifest

from cloudkeep.errors import ConfigurationError, NotFoundError
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DiscoveredMachine, JobSession, RestorePoint
from cloudkeep.server.restore import (
    _chs,
    export_image,
    start_file_restore,
    start_volume_restore,
    vhd_footer,
)


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    context = make_context(tmp_path)
    yield context
    context.close()


@pytest.fixture
def world(ctx: ServerContext, tmp_path: Path) -> World:
    return build_world(ctx, tmp_path / "lab", machines=2, undeployed=(1,))


def add_point(ctx: ServerContext, world: World, machine: int = 0, mode: str = "file", **fields: Any) -> str:
    manifest = write_manifest(world, machine, "volume" if mode == "volume" else "files")
    with ctx.db() as db:
        point = RestorePoint(
            repository_id=world.repository_id,
            machine_id=world.machine_ids[machine],
            snapshot_id=manifest.id,
            mode=mode,
            manifest_digest=manifest.digest,
            root_tree=manifest.tree,
            **fields,
        )
        db.add(point)
        db.flush()
        return point.id


def session_of(ctx: ServerContext, session_id: str) -> JobSession:
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None
        _ = session.tasks
        return session


def test_file_restore_sends_one_command_to_the_target_and_records_a_session(
    ctx: ServerContext, world: World
) -> None:
    fake = FakeDispatcher(ctx)
    point_id = add_point(ctx, world)
    session_id = start_file_restore(
        ctx,
        point_id,
        paths=["/etc"],
        target_machine_id=None,
        target_path="/restore",
        wait=True,
        dispatcher=fake,
    )
    (command,) = fake.sent
    assert command.kind == "restore" and command.machine_id == world.machine_ids[0]
    assert command.body["paths"] == ["/etc"] and command.body["target"] == "/restore"
    assert command.body["in_place"] is False
    assert command.sealed is not None and command.sealed["password"] == "correct horse battery"
    session = session_of(ctx, session_id)
    assert session.kind == "restore" and session.state == "success"
    assert session.stats["restore_point_id"] == point_id
    assert len(session.tasks) == 1 and session.tasks[0].state == "success"


def test_restore_failure_on_the_machine_fails_the_session_with_its_reason(
    ctx: ServerContext, world: World
) -> None:
    class Failing(FakeDispatcher):
        def wait(self, command_id: str, **kw: Any) -> dict[str, Any]:
            from cloudkeep.errors import AuthenticationError

            raise AuthenticationError("restore on machine x failed: wrong password for this repository")

    point_id = add_point(ctx, world)
    session_id = start_file_restore(
        ctx,
        point_id,
        paths=None,
        target_machine_id=None,
        target_path="/r",
        wait=True,
        dispatcher=Failing(ctx),
    )
    session = session_of(ctx, session_id)
    assert session.state == "failed" and "vm-0: restore on machine x failed: wrong password" in session.reason
    assert session.tasks[0].state == "failed"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_path": None, "in_place": False}, "needs a target folder, or in_place"),
        ({"target_path": "/x", "in_place": True}, "either a target folder or in_place"),
        (
            {"target_path": "/x", "target_machine_id": "vm-1"},
            "vm-1 cannot receive a restore: it is not deployed",
        ),
        ({"target_path": "/x", "target_machine_id": "nowhere"}, "machine nowhere does not exist"),
    ],
)
def test_file_restore_bad_requests(
    ctx: ServerContext, world: World, kwargs: dict[str, Any], message: str
) -> None:
    point_id = add_point(ctx, world)
    args: dict[str, Any] = {"paths": None, "target_machine_id": None, **kwargs}
    with pytest.raises((ConfigurationError, NotFoundError), match=message):
        start_file_restore(ctx, point_id, dispatcher=FakeDispatcher(ctx), **args)


def test_restore_point_kind_and_existence_are_checked(
    ctx: ServerContext, world: World, tmp_path: Path
) -> None:
    files = add_point(ctx, world)
    volume = add_point(ctx, world, mode="volume")
    removed = add_point(ctx, world, removed_at=datetime(2026, 1, 2, tzinfo=UTC))
    fake = FakeDispatcher(ctx)
    with pytest.raises(ConfigurationError, match="is a volume backup"):
        start_file_restore(ctx, volume, paths=None, target_machine_id=None, target_path="/x", dispatcher=fake)
    with pytest.raises(ConfigurationError, match="is a file backup, not a volume"):
        start_volume_restore(ctx, files, target_path="/disk.img", dispatcher=fake)
    with pytest.raises(NotFoundError, match="was removed by retention on 2026-01-02"):
        start_file_restore(
            ctx, removed, paths=None, target_machine_id=None, target_path="/x", dispatcher=fake
        )
    with pytest.raises(NotFoundError, match="does not exist"):
        start_volume_restore(ctx, "0" * 32, target_path="/d", dispatcher=fake)
    with pytest.raises(ConfigurationError, match="image format 'vmdk' is not supported"):
        export_image(ctx, volume, tmp_path / "d.vmdk", image_format="vmdk")
    assert fake.sent == []


def test_volume_restore_to_another_machine_requires_it_deployed(ctx: ServerContext, world: World) -> None:
    volume = add_point(ctx, world, mode="volume")
    fake = FakeDispatcher(ctx)
    session_id = start_volume_restore(ctx, volume, target_path="/dev/xvdf", wait=True, dispatcher=fake)
    assert session_of(ctx, session_id).state == "success"
    assert fake.sent[0].kind == "restore_volume" and fake.sent[0].body["target"] == "/dev/xvdf"
    with ctx.db() as db:
        machine = db.get(DiscoveredMachine, world.machine_ids[1])
        assert machine is not None
        name = machine.name
    with pytest.raises(ConfigurationError, match="not deployed"):
        start_volume_restore(ctx, volume, target_path="/d", target_machine_id=name, dispatcher=fake)


def test_vhd_footer_matches_the_format() -> None:
    size = 3 * 2**20
    footer = vhd_footer(size, unique_id=b"\x01" * 16, now=datetime(2026, 11, 26, tzinfo=UTC))
    assert len(footer) == 512
    cookie, features, version, offset, stamp = struct.unpack(">8sIIQI", footer[:28])
    assert (cookie, features, version, offset) == (b"conectix", 2, 0x00010000, 2**64 - 1)
    assert stamp == int(
        (datetime(2026, 11, 26, tzinfo=UTC) - datetime(2000, 1, 1, tzinfo=UTC)).total_seconds()
    )
    original, current = struct.unpack(">QQ", footer[40:56])
    assert original == current == size
    cylinders, heads, spt = struct.unpack(">HBB", footer[56:60])
    assert (cylinders, heads, spt) == _chs(size // 512)
    assert cylinders * heads * spt <= size // 512
    assert struct.unpack(">I", footer[60:64])[0] == 2
    checksum = struct.unpack(">I", footer[64:68])[0]
    assert checksum == (~sum(footer[:64] + footer[68:])) & 0xFFFFFFFF
    assert footer[68:84] == b"\x01" * 16


@pytest.mark.parametrize(
    ("sectors", "expected"),
    [
        (6144, (90, 4, 17)),  # 3 MiB: 17 sectors/track, at least 4 heads
        (65535 * 16 * 63, (16191, 16, 255)),  # large disks: 255 sectors/track, 16 heads
    ],
)
def test_chs_geometry(sectors: int, expected: tuple[int, int, int]) -> None:
    cylinders, heads, spt = _chs(sectors)
    assert (cylinders, heads, spt) == expected
