"""Lock requests per backup and per generation on S3 (moto server), before and after immutability by
generations, and a backup by a credential that holds no lock permission (moto with IAM enforced).

The counts are the numbers docs/format.md ("Immutability by generations") gives.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from cloudkeep.compat import UTC
from cloudkeep.errors import PermissionDeniedError
from cloudkeep.repo import Repository, backup_files, check, prune
from cloudkeep.repo.generations import enable_generations, extend_locks
from cloudkeep.storage import open_store
from cloudkeep.storage.s3 import S3Store
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS
from tests.storage.conftest import make_s3_bucket
from tests.storage.test_s3_permissions import ROOT_KEYS, _enforce
from tests.support.peers import MotoServer

R, G = 30, 7
# New bytes a backup of unchanged files still stores: the trees of the source's parent folders, which
# carry the mtime of /tmp (other processes change it). Every data chunk is far bigger.
PARENTS = 1024


class LockRequests:
    """Counts, on one S3 client, what locks cost: HEADs of packs, PutObjectRetention, and PUTs that
    carry lock headers (which on AWS need s3:PutObjectRetention too)."""

    def __init__(self, store: S3Store) -> None:
        self.ops: Counter[str] = Counter()
        store.client.meta.events.register("before-call.s3", self._seen)

    def _seen(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        path = params.get("url_path", "")
        if model.name == "HeadObject" and "/data/" in path:
            self.ops["pack HEAD"] += 1
        elif model.name == "PutObjectRetention":
            self.ops["PutObjectRetention"] += 1
        elif model.name in ("PutObject", "CreateMultipartUpload") and any(
            h.lower().startswith("x-amz-object-lock") for h in params.get("headers", {})
        ):
            self.ops["locked PUT"] += 1
        elif model.name == "GetObject" and path.endswith("/locks/horizon"):
            self.ops["horizon GET"] += 1

    def take(self) -> dict[str, int]:
        counts, self.ops = dict(self.ops), Counter()
        return counts


def _store(aws: dict[str, str], bucket: str) -> S3Store:
    store = open_store(f"s3://{bucket}/backups", object_lock_mode="GOVERNANCE", **aws)
    assert isinstance(store, S3Store)
    return store


def test_lock_requests_per_backup_before_and_after_generations(
    aws_options: dict[str, str], unique_name: str, source: Path
) -> None:
    now = datetime.now(UTC)
    # before: per-object locks, the second backup re-locks every pack it reuses
    make_s3_bucket(aws_options, unique_name + "a", lock=True)
    before = _store(aws_options, unique_name + "a")
    counter = LockRequests(before)
    repo = Repository.create(before, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=2**20)
    backup_files(repo, [source], hostname="h", retain_until=now + timedelta(days=R))
    packs = sum(1 for _ in before.list("data/"))
    counter.take()
    backup_files(repo, [source], hostname="h", retain_until=now + timedelta(days=R, minutes=1))
    old = counter.take()
    assert old["pack HEAD"] == packs and old["PutObjectRetention"] == packs

    # after: the bucket's default retention locks everything, the writer sends no lock request
    make_s3_bucket(aws_options, unique_name + "b", lock=True)
    after = _store(aws_options, unique_name + "b")
    after.set_default_retention(R + G)  # the server, on the empty bucket (moto refuses it later)
    counter = LockRequests(after)
    repo = Repository.create(after, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=2**20)
    enable_generations(repo, retention_days=R, generation_days=G)
    backup_files(repo, [source], hostname="h", retain_until=now + timedelta(days=R))
    counter.take()
    second = backup_files(repo, [source], hostname="h", retain_until=now + timedelta(days=R, minutes=1))
    new = counter.take()
    assert second.stats["bytes_new"] < PARENTS
    assert new == {"horizon GET": 1}  # no HEAD, no PutObjectRetention, no locked PUT
    for info in after.list(""):
        locked = after.stat(info.key)
        assert locked is not None and locked.retain_until is not None, info.key  # by the default rule
        assert locked.retain_until >= now + timedelta(days=R + G - 1), info.key
    counter.take()  # (the test's own HEADs above)
    # the server's step, a generation later: one PutObjectRetention per referenced pack, no HEAD
    result = extend_locks(Repository.open(after, PASSWORD), now=now + timedelta(days=G))
    server = counter.take()
    packs = sum(1 for _ in after.list("data/"))
    assert (
        result.extended == packs and server.get("PutObjectRetention") == packs and "pack HEAD" not in server
    )
    for when in (now, now + timedelta(hours=2)):  # its locked markers are hidden, not refused
        prune(Repository.open(after, PASSWORD), now=when)
    assert check(Repository.open(after, PASSWORD), read_data=True).ok
    print(f"\nlock requests, second backup of {packs} packs: before {old}, after {new}; server {server}")


@pytest.fixture(scope="module")
def moto_with_auth() -> Iterator[MotoServer]:
    peer = MotoServer.start(auth=True)
    yield peer
    peer.stop()


AGENT_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": [
                "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket",
                "s3:GetBucketLocation", "s3:GetBucketObjectLockConfiguration",
            ],
            "Resource": "*",
        },
        {
            "Effect": "Deny",
            "Action": [
                "s3:PutObjectRetention", "s3:BypassGovernanceRetention",
                "s3:PutBucketObjectLockConfiguration",
            ],
            "Resource": "*",
        },
    ],
}  # fmt: skip


def test_compromised_machine_backs_up_without_lock_permissions(
    moto_with_auth: MotoServer, unique_name: str, source: Path
) -> None:
    """An immutable backup succeeds with an agent credential granted no lock permission (and denied
    them explicitly), sending no lock request at all, while what it wrote is locked by the bucket's
    default for R + G days. moto enforces identity policies, but it maps ``PUT ?retention`` to
    s3:PutObject and does not ask for s3:PutObjectRetention on a PUT with lock headers (AWS does
    both): so the test proves the agent never sends such a request rather than that moto refuses it."""
    endpoint = moto_with_auth.endpoint
    _enforce(endpoint, enforced=False)
    root = {"endpoint_url": endpoint, "region": "us-east-1", **ROOT_KEYS}
    make_s3_bucket(root, unique_name, lock=True)
    server_store = _store(root, unique_name)
    server_store.set_default_retention(R + G)
    repo = Repository.create(server_store, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=2**20)
    enable_generations(repo, retention_days=R, generation_days=G)
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **ROOT_KEYS)
    iam.create_user(UserName=unique_name)
    iam.put_user_policy(UserName=unique_name, PolicyName="agent", PolicyDocument=json.dumps(AGENT_POLICY))
    key = iam.create_access_key(UserName=unique_name)["AccessKey"]
    agent_keys = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
    _enforce(endpoint, enforced=True)
    try:
        agent = _store({"endpoint_url": endpoint, "region": "us-east-1", **agent_keys}, unique_name)
        counter = LockRequests(agent)
        now = datetime.now(UTC)
        machine = Repository.open(agent, PASSWORD, writer_prefix="writers/m1/")
        snap = backup_files(machine, [source], hostname="m1", retain_until=now + timedelta(days=R))
        again = backup_files(machine, [source], hostname="m1", retain_until=now + timedelta(days=R))
        assert again.stats["bytes_new"] < PARENTS
        assert counter.take() == {"horizon GET": 2}
        pack = next(agent.list("writers/m1/data/")).key
        with pytest.raises(PermissionDeniedError):  # nor can it lengthen the bucket's default
            agent.set_default_retention(36500)
    finally:
        _enforce(endpoint, enforced=False)
    info = server_store.stat(pack)
    assert info is not None and info.retain_until is not None
    assert info.retain_until < now + timedelta(days=R + G + 1)  # the bucket's default, not decades
    assert server_store.stat(f"writers/m1/snapshots/{snap.id}") is not None
