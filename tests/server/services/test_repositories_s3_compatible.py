"""`repository add`, `repository verify` and `doctor` against S3-compatible stores.

The stores are ``S3CompatStandin`` (tests/support/s3_standin.py): a proxy serving HTTPS in front
of the real moto server that takes away one behaviour per test — STS, create-only writes,
aws-chunked decoding — as MinIO-, Ceph- or Wasabi-style stores may.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from pydantic import SecretStr
from tests.support.peers import MotoServer
from tests.support.s3_standin import S3CompatStandin
from tests.support.tls import TlsFiles

from cloudkeep.config import Settings
from cloudkeep.errors import ConfigurationError, NotSupportedError
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.services import credentials, repositories
from cloudkeep.server.services.schemas import CredentialCreate, RepositoryCreate

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
AGENT_KEY = {"agent_access_key_id": "agent-key", "agent_secret_access_key": "agent-secret"}
CHECKS = {
    "create-only writes", "ranged reads", "listing pagination", "delimiter listings",
    "multipart and abort", "object lock", "checksum framing", "agent credentials",
}  # fmt: skip


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    opened = open_context(Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'state.db'}"))
    yield opened
    opened.close()


def _credential(
    ctx: ServerContext, standin: S3CompatStandin, tls_files: TlsFiles, name: str, **extra: Any
) -> str:
    secret = {k: SecretStr(v) for k, v in {**KEYS, **extra.pop("secret", {})}.items()}
    options = {"endpoint_url": standin.endpoint, "ca_bundle": str(tls_files.cert), "max_attempts": 2}
    options.update(list_page_size=20, **extra)  # verify pages past 20 keys, not 1000: a fast test
    credentials.create_credential(
        ctx, CredentialCreate(name=name, provider="aws", secret=secret, options=options)
    )
    return name


def _add(ctx: ServerContext, credential: str, location: str) -> Any:
    return repositories.create_repository(
        ctx,
        RepositoryCreate(
            name=location.replace("/", "-"), credential=credential, location=location,
            password=SecretStr("correct-horse-battery"),
        ),
    )  # fmt: skip


def _keys(moto_server: MotoServer, bucket: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1", **KEYS)
    try:
        return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    except s3.exceptions.NoSuchBucket:
        return []


def test_add_without_sts_and_without_agent_key_is_refused_before_anything_is_made(
    ctx: ServerContext,
    standin: S3CompatStandin,
    tls_files: TlsFiles,
    moto_server: MotoServer,
    unique_name: str,
) -> None:
    standin.quirks.no_sts = True
    cred = _credential(ctx, standin, tls_files, "minio")
    with pytest.raises(NotSupportedError, match="has no STS") as raised:
        _add(ctx, cred, unique_name)
    assert "agent_access_key_id" in str(raised.value)
    assert _keys(moto_server, unique_name) == []
    assert repositories.list_repositories(ctx).items == []


def test_add_without_sts_hands_agents_the_agent_key(
    ctx: ServerContext,
    standin: S3CompatStandin,
    tls_files: TlsFiles,
    moto_server: MotoServer,
    unique_name: str,
) -> None:
    standin.quirks.no_sts = True
    cred = _credential(ctx, standin, tls_files, "minio", secret=AGENT_KEY)
    view = _add(ctx, cred, unique_name + "/repo")
    assert any(key.startswith("repo/keys/") for key in _keys(moto_server, unique_name))
    provider = ctx.provider_for(view.credential_id)
    try:
        scoped = provider.storage.scoped_credentials(view.location, "writers/m1/", expires_seconds=900)
    finally:
        provider.close()
    assert scoped.options["aws_access_key_id"] == "agent-key"
    assert "aws_session_token" not in scoped.options
    assert scoped.options["request_checksum_calculation"] == "when_required"


def test_separate_sts_endpoint(
    ctx: ServerContext,
    standin: S3CompatStandin,
    tls_files: TlsFiles,
    moto_server: MotoServer,
    unique_name: str,
) -> None:
    """STS answered elsewhere than the store (here: moto directly, the store being the stand-in)."""
    standin.quirks.no_sts = True
    cred = _credential(ctx, standin, tls_files, "split", sts_endpoint_url=moto_server.endpoint)
    view = _add(ctx, cred, unique_name)
    provider = ctx.provider_for(view.credential_id)
    try:
        scoped = provider.storage.scoped_credentials(view.location, "writers/m1/", expires_seconds=900)
    finally:
        provider.close()
    assert scoped.options["aws_session_token"]  # temporary, from STS


def test_add_refuses_a_store_that_ignores_if_none_match(
    ctx: ServerContext,
    standin: S3CompatStandin,
    tls_files: TlsFiles,
    moto_server: MotoServer,
    unique_name: str,
) -> None:
    standin.quirks.ignore_if_none_match = True
    cred = _credential(ctx, standin, tls_files, "nocas")
    with pytest.raises(ConfigurationError, match="does not enforce create-only writes"):
        _add(ctx, cred, unique_name)
    assert _keys(moto_server, unique_name) == []  # no repository, no probe left behind
    assert repositories.list_repositories(ctx).items == []


def test_verify_prints_what_works_and_what_cloudkeep_does(
    ctx: ServerContext,
    standin: S3CompatStandin,
    tls_files: TlsFiles,
    moto_server: MotoServer,
    unique_name: str,
) -> None:
    cred = _credential(ctx, standin, tls_files, "store")
    view = _add(ctx, cred, unique_name + "/repo")
    good = repositories.verify_store(ctx, view.name)
    assert {c.name for c in good.checks} == CHECKS
    assert good.ok, [c for c in good.checks if not c.ok]

    standin.quirks.ignore_if_none_match = standin.quirks.keep_chunked_framing = standin.quirks.no_sts = True
    weak = repositories.verify_store(ctx, view.name)
    by_name = {c.name: c for c in weak.checks}
    assert not weak.ok
    assert not by_name["create-only writes"].ok and "refuses" in by_name["create-only writes"].action
    framing = by_name["checksum framing"]
    assert framing.ok and "not understood" in framing.detail and "Content-MD5" in framing.action
    assert not by_name["agent credentials"].ok and "no STS" in by_name["agent credentials"].detail
    assert by_name["ranged reads"].ok and by_name["multipart and abort"].ok
    assert not [k for k in _keys(moto_server, unique_name) if "ck-verify" in k], "verify cleans up"


def test_doctor_reports_a_store_without_sts_without_a_traceback(
    ctx: ServerContext, standin: S3CompatStandin, tls_files: TlsFiles
) -> None:
    standin.quirks.no_sts = True
    cred = _credential(ctx, standin, tls_files, "minio")
    (result,) = credentials.doctor(ctx, cred)
    assert not result.ok
    assert "sts:GetCallerIdentity (not implemented at this endpoint)" in result.missing_permissions
