"""doctor's configuration check applies where it matters: a missing ssm_output_bucket is reported
for a credential that manages machines (or is not used yet), not for one only behind repositories.

Real provider against the moto server; the repository and protection group rows are inserted
directly (an in-process stand-in for `repository add` / `protection-group create`, tested elsewhere).
"""

from __future__ import annotations

import pytest

from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import ProtectionGroup, Repository
from cloudkeep.server.services import credentials
from cloudkeep.server.services.schemas import CredentialCreate

pytestmark = pytest.mark.moto


def test_ssm_output_bucket_matters_only_for_machines(ctx: ServerContext, aws_options: dict[str, str]) -> None:
    options = {"endpoint_url": aws_options["endpoint_url"], "region": "us-east-1", "max_attempts": 1}
    secret = {k: aws_options[k] for k in ("aws_access_key_id", "aws_secret_access_key")}
    cred = credentials.create_credential(
        ctx,
        CredentialCreate(name="aws", provider="aws", options=options, secret=secret),  # type: ignore[arg-type]
    )

    (unused,) = credentials.doctor(ctx, "aws")
    assert not unused.ok and "ssm_output_bucket" in unused.problems[0]

    with ctx.db() as db:
        db.add(Repository(name="store", purpose="backup", credential_id=cred.id, location="bucket"))
    (store_only,) = credentials.doctor(ctx, "aws")
    assert store_only.problems == [] and store_only.ok, store_only

    with ctx.db() as db:
        dist = Repository(name="dist", purpose="distribution", credential_id=cred.id, location="dist")
        db.add(dist)
        db.flush()
        db.add(ProtectionGroup(name="fleet", credential_id=cred.id, distribution_repository_id=dist.id))
    (fleet,) = credentials.doctor(ctx, "aws")
    assert not fleet.ok and fleet.missing_permissions == [] and "ssm_output_bucket" in fleet.problems[0]
