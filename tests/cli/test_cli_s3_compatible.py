"""The commands a user runs against AWS, run unchanged against an S3-compatible store without STS.

The store is ``S3CompatStandin`` over HTTPS (tests/support/s3_standin.py) in front of the real
moto server, answering STS calls with ``404 Not Found`` as such stores do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from click.testing import Result

from tests.cli.test_cli_core import ok, run  # noqa: F401 - the `run` fixture
from tests.support.peers import MotoServer
from tests.support.s3_standin import S3CompatStandin
from tests.support.tls import make_self_signed

Invoke = Callable[..., Result]


@pytest.fixture
def no_sts_store(
    moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3CompatStandin]:
    proxy = S3CompatStandin(moto_server.endpoint, tls=make_self_signed(tmp_path_factory.mktemp("tls")))
    proxy.quirks.no_sts = True
    yield proxy
    proxy.close()


def _add_credential(run: Invoke, store: S3CompatStandin, name: str, *secrets: str) -> None:  # noqa: F811
    assert store.tls is not None
    extra = [arg for secret in secrets for arg in ("--secret", secret)]
    ok(
        run(
            "credential", "add", name, "--provider", "aws", "--access-key-id", "testing",
            "--option", f"endpoint_url={store.endpoint}", "--option", f"ca_bundle={store.tls.cert}",
            "--option", "max_attempts=2", "--option", "list_page_size=20", *extra,
            input="testing\n",
        )
    )  # fmt: skip


@pytest.mark.moto
def test_store_without_sts_from_the_cli(run: Invoke, no_sts_store: S3CompatStandin, unique_name: str) -> None:  # noqa: F811
    _add_credential(run, no_sts_store, "minio")
    refused = run(
        "repository", "add", "main", "--location", unique_name, "--credential", "minio", "--password-stdin",
        input="correct-horse-battery\n",
    )  # fmt: skip
    assert (
        refused.exit_code != 0 and "has no STS" in refused.output and "agent_access_key_id" in refused.output
    )
    assert "Traceback" not in refused.output

    doctor = run("doctor", "--credential", "minio")
    assert doctor.exit_code == 1 and "Traceback" not in doctor.output
    assert "not implemented at this endpoint" in doctor.output

    _add_credential(
        run,
        no_sts_store,
        "minio-repo",
        "agent_access_key_id=agent-key",
        "agent_secret_access_key=agent-secret",
    )
    ok(
        run(
            "repository", "add", "main", "--location", unique_name, "--credential", "minio-repo",
            "--password-stdin", input="correct-horse-battery\n",
        )
    )  # fmt: skip
    verified = json.loads(ok(run("repository", "verify", "main", "--json")))
    checks = {c["name"]: c for c in verified["checks"]}
    assert verified["ok"] and checks["create-only writes"]["ok"]
    assert "no STS" in checks["agent credentials"]["detail"]
    assert "isolation is lost" in checks["agent credentials"]["action"]
    assert "Store checks" in ok(run("repository", "verify", "main"))
