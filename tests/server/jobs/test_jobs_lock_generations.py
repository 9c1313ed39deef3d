"""The server's side of immutability by generations against S3 (moto server): adding an immutable
repository sets the bucket's default retention and the lock horizon; its maintenance step extends
the referenced packs' locks in bulk, at most once per generation, as a recorded session."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import boto3
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from tests.repo.conftest import write_tree
from tests.support.peers import MotoServer

from cloudkeep.compat import UTC
from cloudkeep.config import Settings
from cloudkeep.repo import Repository, backup_files
from cloudkeep.repo.generations import read_horizon
from cloudkeep.repo.pack import pack_id_from_key
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.db.models import JobSession
from cloudkeep.server.services import credentials, maintenance, repositories
from cloudkeep.server.services.schemas import CredentialCreate, RepositoryCreate
from cloudkeep.storage import open_store

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
PASSWORD = "correct-horse-battery"


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    opened = open_context(Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'state.db'}"))
    yield opened
    opened.close()


def test_server_sets_default_retention_and_extends_locks_once_per_generation(
    ctx: ServerContext,
    moto_server: MotoServer,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = {"endpoint_url": moto_server.endpoint, "region": "us-east-1"}
    secret = {k: SecretStr(v) for k, v in KEYS.items()}
    credentials.create_credential(
        ctx, CredentialCreate(name="aws", provider="aws", secret=secret, options=options)
    )
    repositories.create_repository(
        ctx,
        RepositoryCreate(
            name="locked", credential="aws", location=unique_name, password=SecretStr(PASSWORD),
            immutability_days=30, options={"pack_size": 2**20},
        ),
    )  # fmt: skip
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1", **KEYS)
    rule = s3.get_object_lock_configuration(Bucket=unique_name)["ObjectLockConfiguration"]["Rule"]
    assert rule["DefaultRetention"]["Days"] == 37  # R + G
    store = open_store(f"s3://{unique_name}/", endpoint_url=moto_server.endpoint, region="us-east-1", **KEYS)
    horizon = read_horizon(Repository.open(store, PASSWORD))
    assert horizon is not None and (horizon.retention_days, horizon.generation_days) == (30, 7)

    machine = Repository.open(store, PASSWORD, writer_prefix="writers/m1/")
    now = datetime.now(UTC)
    backup_files(
        machine, [write_tree(tmp_path / "src")], hostname="m1", retain_until=now + timedelta(days=30)
    )
    packs = [i.key for i in store.list("writers/m1/data/")]
    assert packs

    later = now + timedelta(days=7)
    monkeypatch.setattr(maintenance, "clock", lambda: later)
    done = maintenance.extend_locks(ctx, "locked")
    assert done.detail.startswith(f"{len(packs)} packs locked until {later + timedelta(days=37):%Y-%m-%d}")
    for key in packs:
        info = store.stat(key)
        assert info is not None and info.retain_until is not None
        assert abs(info.retain_until - (later + timedelta(days=37))) < timedelta(seconds=2), key
    monkeypatch.setattr(maintenance, "clock", lambda: later + timedelta(days=6))
    again = maintenance.extend_locks(ctx, "locked")
    assert again.detail.startswith("skipped: extended")
    with ctx.db() as db:
        sessions = db.scalars(select(JobSession).where(JobSession.kind == "maintenance")).all()
        steps = [(s.stats["operation"], s.state) for s in sessions]
    assert steps == [("extend-locks", "success"), ("extend-locks", "success")]


def test_extend_locks_moves_a_per_object_locked_repository_to_generations(
    ctx: ServerContext,
    moto_server: MotoServer,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A repository whose backups locked each object (no horizon yet) is moved by its first
    extension: the horizon is written and each old pack's lock read once (moto refuses a lock
    configuration on a full bucket, so the bucket's default rule is set at creation here, and the
    repository's horizon hidden to stand for one made before generations)."""
    options = {"endpoint_url": moto_server.endpoint, "region": "us-east-1"}
    secret = {k: SecretStr(v) for k, v in KEYS.items()}
    credentials.create_credential(
        ctx, CredentialCreate(name="aws", provider="aws", secret=secret, options=options)
    )
    repositories.create_repository(
        ctx,
        RepositoryCreate(
            name="old", credential="aws", location=unique_name, password=SecretStr(PASSWORD),
            immutability_days=30, options={"pack_size": 2**20},
        ),
    )  # fmt: skip
    store = open_store(f"s3://{unique_name}/", endpoint_url=moto_server.endpoint, region="us-east-1", **KEYS)
    store.hide("locks/horizon")
    now = datetime.now(UTC)
    machine = Repository.open(store, PASSWORD, writer_prefix="writers/m1/")
    backup_files(machine, [write_tree(tmp_path / "src")], hostname="m1", retain_until=now + timedelta(days=3))
    packs = [i.key for i in store.list("writers/m1/data/")]
    monkeypatch.setattr(maintenance, "clock", lambda: now)
    done = maintenance.extend_locks(ctx, "old")
    assert done.detail.endswith(f", {len(packs)} read once")
    horizon = read_horizon(Repository.open(store, PASSWORD))
    assert horizon is not None and horizon.packs == {pack_id_from_key(k) for k in packs}
