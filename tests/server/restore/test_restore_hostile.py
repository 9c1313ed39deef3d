"""A hostile restore point downloaded on the server host — by the service and by the REST route —
never writes outside the download folder, and the download fails naming what it refused.

The repository is real (the local provider's folder store); the restore point is crafted the way
a compromised machine could write its own manifests (``tests.support.hostile``).
"""

from __future__ import annotations

import io
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from tests.server.jobs_fakes import FakeDispatcher, build_world, crafted_point, make_context
from tests.support.hostile import file, folder, sandbox, symlink

from cloudkeep.errors import ConfigurationError, RestoreIncompleteError
from cloudkeep.server.api import create_app
from cloudkeep.server.client import HttpClient
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import RestorePoint
from cloudkeep.server.restore import download_files, start_file_restore, start_volume_restore
from cloudkeep.server.services import tokens
from cloudkeep.server.services.schemas import TokenCreate

PASSWORD = "correct horse battery"


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    context = make_context(tmp_path)
    yield context
    context.close()


def hostile_point(ctx: ServerContext, lab: Path, outside: Path) -> str:
    """A restore point with escapes next to one good file; returns its restore point id."""
    world = build_world(ctx, lab, machines=1, password=PASSWORD)
    return crafted_point(world, [
        file("../../../victim.txt", b"owned\n"),
        symlink("s", str(outside / "victim-dir")), folder("s", [file("planted")]),
        folder("..", [folder("..", [folder("..", [file("victim.txt", b"owned\n")])])]),
        folder("good", [file("kept.txt", b"kept\n")]),
    ])  # fmt: skip


def test_download_files_stays_in_dest_and_names_what_it_refused(ctx: ServerContext, tmp_path: Path) -> None:
    outside, dest, state = sandbox(tmp_path / "box")
    point_id = hostile_point(ctx, tmp_path / "lab", outside)
    before = state()
    with pytest.raises(RestoreIncompleteError) as raised:
        download_files(ctx, point_id, None, dest)
    assert state() == before
    assert "3 entries not restored" in raised.value.message
    assert any("/../../../victim.txt" in e for e in raised.value.errors)
    assert any(e.startswith("/s:") for e in raised.value.errors)
    assert (dest / "good" / "kept.txt").read_bytes() == b"kept\n"  # the rest was restored
    assert (outside / "victim.txt").read_text() == "original\n"


def test_rest_download_stays_in_its_temporary_folder(
    ctx: ServerContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside, folder_of_temps, state = sandbox(tmp_path / "box")
    point_id = hostile_point(ctx, tmp_path / "lab", outside)
    # The route's temporary folder lands three levels inside ``outside``: any escape is seen there.
    monkeypatch.setattr(tempfile, "tempdir", str(folder_of_temps))
    token = tokens.create_token(ctx, TokenCreate(name="admin", scope="admin")).token
    before = state()
    with TestClient(create_app(ctx), headers={"Authorization": f"Bearer {token}"}) as api:
        response = api.post(f"/api/v1/restore-points/{point_id}/download", json={"paths": []})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "restore_incomplete" and "../../../victim.txt" in error["message"]
    assert state() == before and list(folder_of_temps.iterdir()) == []  # its folder is removed too
    # and the HTTP client turns it back into the same error type
    raised = HttpClient._error(httpx.Response(422, json=response.json()))
    assert isinstance(raised, RestoreIncompleteError) and "../../../victim.txt" in raised.message


@pytest.mark.parametrize("target", ["/restore/../../etc", "..", "C:\\restore\\..\\x"])
def test_restore_targets_may_not_climb(ctx: ServerContext, tmp_path: Path, target: str) -> None:
    world = build_world(ctx, tmp_path / "lab", machines=1)
    with ctx.db() as db:
        point = RestorePoint(repository_id=world.repository_id, machine_id=world.machine_ids[0],
                             snapshot_id=uuid.uuid4().hex, mode="file")  # fmt: skip
        volume = RestorePoint(repository_id=world.repository_id, machine_id=world.machine_ids[0],
                              snapshot_id=uuid.uuid4().hex, mode="volume")  # fmt: skip
        db.add_all([point, volume])
        db.flush()
        point_id, volume_id = point.id, volume.id
    fake = FakeDispatcher(ctx)
    with pytest.raises(ConfigurationError, match=r"may not contain '\.\.'"):
        start_file_restore(
            ctx, point_id, paths=None, target_machine_id=None, target_path=target, dispatcher=fake
        )
    with pytest.raises(ConfigurationError, match=r"may not contain '\.\.'"):
        start_volume_restore(ctx, volume_id, target_path=target, dispatcher=fake)
    assert fake.sent == []


def test_linux_restore_targets_are_absolute(ctx: ServerContext, tmp_path: Path) -> None:
    world = build_world(ctx, tmp_path / "lab", machines=1)
    with ctx.db() as db:
        point = RestorePoint(repository_id=world.repository_id, machine_id=world.machine_ids[0],
                             snapshot_id=uuid.uuid4().hex, mode="file")  # fmt: skip
        db.add(point)
        db.flush()
        point_id = point.id
    fake = FakeDispatcher(ctx)
    with pytest.raises(ConfigurationError, match="on vm-0 must be absolute"):
        start_file_restore(
            ctx, point_id, paths=None, target_machine_id=None, target_path="restore", dispatcher=fake
        )
    assert fake.sent == []


def test_remote_cli_download_extracts_nothing_outside_dest(tmp_path: Path) -> None:
    """The tar a server sends is extracted member by member; escaping members are named, not written."""
    outside, dest, state = sandbox(tmp_path)
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w") as tar:
        members = [
            ("good.txt", tarfile.REGTYPE, ""),
            ("../../../victim.txt", tarfile.REGTYPE, ""),
            ("abs-link", tarfile.SYMTYPE, str(outside / "victim.txt")),
        ]
        for name, kind, target in members:
            member = tarfile.TarInfo(name)
            member.type, member.linkname = kind, target
            data = b"content\n" if kind == tarfile.REGTYPE else b""
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    client = HttpClient("http://server.test", None)
    client.http = httpx.Client(
        base_url="http://server.test/api/v1",
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=body.getvalue())),
    )
    before = state()
    with pytest.raises(RestoreIncompleteError) as raised:
        client.download("rp", ["/"], dest)
    assert state() == before and (dest / "good.txt").read_bytes() == b"content\n"
    assert [e.split(":")[0] for e in raised.value.errors] == ["../../../victim.txt", "abs-link"]
