"""S3 as the control plane sees it: buckets, presigned URLs, STS credentials scoped to a prefix.

A *location* is ``bucket[/prefix]``. Scoped credentials come from STS with a session policy
(the effective permissions are the intersection of the caller's and the session policy):
``AssumeRole`` when the credential names a ``role_arn`` (or the option ``agent_role_arn``),
otherwise ``GetFederationToken`` (which needs an IAM user's long-term keys). The session policy
allows reading the repository and creating objects only under the agent's prefix: no delete, no
object-lock change (docs/security.md).

S3-compatible stores often have no STS. Where STS does not answer, agents get the credential's
*agent key* (``agent_access_key_id`` / ``agent_secret_access_key``): a separate, narrower key the
administrator made in the store for this repository. It is long-lived and shared by every
machine writing to the repository, so per-machine isolation is lost (docs/s3-compatible.md).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta
from typing import Any, Literal

from botocore.exceptions import ClientError

from cloudkeep.compat import UTC
from cloudkeep.errors import CloudkeepError, ConfigurationError, NotSupportedError
from cloudkeep.providers.aws.errors import (
    BUCKET_NOT_FOUND_CODES,
    NO_LOCK_CODES,
    aws_errors,
    error_code,
    is_not_implemented,
    sdk_errors,
)
from cloudkeep.providers.aws.session import AwsSession
from cloudkeep.providers.base import ScopedCredentials, StorageService
from cloudkeep.storage.base import ObjectStore, open_store
from cloudkeep.storage.conformance import StoreCheck

log = logging.getLogger(__name__)

MAX_PRESIGN_SECONDS = 7 * 86400  # SigV4 ceiling
MIN_STS_SECONDS = 900


def split_location(location: str) -> tuple[str, str]:
    bucket, _, prefix = location.removeprefix("s3://").strip("/").partition("/")
    if not bucket:
        raise ConfigurationError(f"S3 location {location!r} needs a bucket", hint="use bucket[/prefix]")
    return bucket, prefix.strip("/")


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


# Never an agent's (docs/security.md): deleting, locking or unlocking objects and changing the
# bucket. Denied explicitly, so that a broad agent role still cannot lend them to a session.
AGENT_DENIED_ACTIONS = [
    "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectRetention", "s3:PutObjectLegalHold",
    "s3:BypassGovernanceRetention", "s3:PutBucket*", "s3:DeleteBucket*", "s3:PutLifecycleConfiguration",
    "s3:PutObjectAcl", "s3:PutObjectVersionAcl", "s3:PutReplicationConfiguration",
]  # fmt: skip


def session_policy(bucket: str, write_prefix: str, read_prefix: str = "") -> dict[str, Any]:
    """Add, never destroy: read the repository (``read_prefix``), create only under ``write_prefix``.

    No delete, no lock changes: retention and prune run on the server with its own credential.
    ``s3:ListBucket`` is not narrowed by ``s3:prefix``: ``HeadBucket`` needs it unconditioned.
    No overwrite either: every ``PutObject`` / ``CompleteMultipartUpload`` must be create-only
    (``If-None-Match: *``, AWS's ``s3:if-none-match`` condition key); an absent
    ``s3:ObjectCreationOperation`` counts as a creation, so the deny fails closed.
    Evaluated in tests by ``cloudkeep.providers.aws.policy_eval`` (moto ignores session policies).
    """
    arn = f"arn:aws:s3:::{bucket}"
    objects = f"{arn}/{read_prefix.strip('/')}/*" if read_prefix.strip("/") else f"{arn}/*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadBucket", "Effect": "Allow", "Resource": arn,
             "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:GetBucketObjectLockConfiguration"]},
            {"Sid": "ReadRepository", "Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectRetention"],
             "Resource": objects},
            {"Sid": "AddOwnObjects", "Effect": "Allow", "Resource": f"{arn}/{write_prefix}*",
             "Action": ["s3:PutObject", "s3:AbortMultipartUpload"]},
            {"Sid": "NeverDestroyOrLock", "Effect": "Deny", "Resource": [arn, f"{arn}/*"],
             "Action": AGENT_DENIED_ACTIONS},
            # Create, never replace: a PUT or a multipart completion without If-None-Match: * is
            # refused; the multipart steps that cannot carry the header (create, parts) stay allowed.
            {"Sid": "NeverOverwrite", "Effect": "Deny", "Resource": f"{arn}/*", "Action": "s3:PutObject",
             "Condition": {"StringNotEquals": {"s3:if-none-match": "*"},
                           "BoolIfExists": {"s3:ObjectCreationOperation": "true"}}},
        ],
    }  # fmt: skip


class S3StorageService(StorageService):
    def __init__(
        self,
        session: AwsSession,
        *,
        agent_role_arn: str | None = None,
        agent_key: tuple[str, str] | None = None,
    ) -> None:
        self.session = session
        self.agent_role_arn = agent_role_arn or session.credential.get("role_arn")
        self.agent_key = agent_key
        self.sts_missing: NotSupportedError | None = None  # set once STS has been seen not to answer

    def open_store(self, location: str) -> ObjectStore:
        bucket, prefix = split_location(location)
        return open_store(f"s3://{bucket}/{prefix}", **self.session.store_options())

    def ensure_container(self, location: str, *, object_lock: bool = False) -> None:
        bucket, _ = split_location(location)
        s3 = self.session.client("s3")
        args: dict[str, Any] = {"Bucket": bucket}
        if self.session.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.session.region}
        if object_lock:
            args["ObjectLockEnabledForBucket"] = True
        created = False
        if not self._bucket_exists(bucket):
            with aws_errors("s3:CreateBucket", bucket):
                try:
                    s3.create_bucket(**args)
                    created = True
                except ClientError as error:
                    if error_code(error) != "BucketAlreadyOwnedByYou":
                        raise
        if not object_lock:
            return
        try:  # an existing bucket must already have it (it can only be set at creation)
            self._require_object_lock(bucket)
        except CloudkeepError:
            if created:  # a store that ignored or refused the lock: leave no half-made bucket behind
                self._remove_empty_bucket(bucket)
            raise

    def _remove_empty_bucket(self, bucket: str) -> None:
        try:
            self.session.client("s3").delete_bucket(Bucket=bucket)
        except sdk_errors() as error:
            log.warning(
                "could not remove bucket %s created for a refused immutable repository: %s", bucket, error
            )

    def _bucket_exists(self, bucket: str) -> bool:
        with aws_errors("s3:ListBucket", bucket):
            try:
                self.session.client("s3").head_bucket(Bucket=bucket)
            except ClientError as error:
                if error_code(error) in BUCKET_NOT_FOUND_CODES:
                    return False
                raise
        return True

    def _require_object_lock(self, bucket: str) -> None:
        s3 = self.session.client("s3")
        with aws_errors("s3:GetBucketObjectLockConfiguration", bucket):
            try:
                config = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
            except ClientError as error:
                if is_not_implemented(error):
                    raise NotSupportedError(
                        f"the store at {self.session.endpoint_url} does not implement Object Lock "
                        f"(HTTP 501 to s3:GetBucketObjectLockConfiguration on {bucket})",
                        hint="an immutable repository needs a store with Object Lock; "
                        "use --immutability-days 0 on this store",
                    ) from error
                if error_code(error) not in NO_LOCK_CODES:
                    raise
                config = {}
        if config.get("ObjectLockEnabled") != "Enabled":
            raise NotSupportedError(
                f"bucket {bucket} exists without Object Lock",
                hint="use a new bucket for an immutable repository (Object Lock is set at creation)",
            )

    def signed_url(
        self, location: str, key: str, *, method: Literal["GET", "PUT"], expires_seconds: int
    ) -> str:
        if not 0 < expires_seconds <= MAX_PRESIGN_SECONDS:
            raise ConfigurationError(f"presigned URLs last 1 s to 7 days, not {expires_seconds} s")
        bucket, prefix = split_location(location)
        operation = "get_object" if method == "GET" else "put_object"
        with aws_errors(f"s3:{'GetObject' if method == 'GET' else 'PutObject'} (presign)", bucket):
            return str(
                self.session.client("s3").generate_presigned_url(
                    operation, Params={"Bucket": bucket, "Key": _join(prefix, key)}, ExpiresIn=expires_seconds
                )
            )

    def scoped_credentials(self, location: str, prefix: str, *, expires_seconds: int) -> ScopedCredentials:
        """STS credentials scoped to ``prefix``; where the endpoint has no STS, the agent key."""
        if self.sts_missing is None:
            try:
                return self._sts_credentials(location, prefix, expires_seconds=expires_seconds)
            except NotSupportedError as exc:
                self.sts_missing = exc
        if self.agent_key is None:
            raise NotSupportedError(
                f"the endpoint {self.session.sts_endpoint_url} has no STS ({self.sts_missing.message}), "
                "so agents cannot get scoped temporary credentials",
                hint="create a key in the store limited to this bucket/prefix and add it to the cloud "
                "credential as agent_access_key_id / agent_secret_access_key, or set sts_endpoint_url "
                "(see docs/s3-compatible.md)",
            ) from self.sts_missing
        return self._agent_key_credentials(location, expires_seconds)

    def _agent_key_credentials(self, location: str, expires_seconds: int) -> ScopedCredentials:
        bucket, base = split_location(location)
        assert self.agent_key is not None
        options: dict[str, Any] = {
            "region": self.session.region,
            "aws_access_key_id": self.agent_key[0],
            "aws_secret_access_key": self.agent_key[1],
            **self.session.checksums,
        }
        if self.session.endpoint_url:
            options["endpoint_url"] = self.session.endpoint_url
        return ScopedCredentials(
            provider="aws",
            store_url=f"s3://{bucket}/{base}".rstrip("/"),
            options=options,
            # The key itself does not expire; agents still ask again at the usual interval.
            expires_at=datetime.now(UTC) + timedelta(seconds=expires_seconds),
        )

    def compatibility_checks(self, location: str) -> list[StoreCheck]:
        """How agents will get credentials for ``location`` (STS, or the agent key without it)."""
        name = "agent credentials"
        try:
            self.scoped_credentials(location, "ck-verify/", expires_seconds=MIN_STS_SECONDS)
        except CloudkeepError as exc:
            return [
                StoreCheck(name, False, str(exc), "backup jobs cannot run until agents can get credentials")
            ]
        if self.sts_missing is None:
            return [
                StoreCheck(name, True, "STS answers: each agent gets short-lived credentials for its prefix")
            ]
        return [
            StoreCheck(
                name, True, "no STS at this endpoint: agents use the credential's agent key",
                "per-machine isolation is lost: every machine holds the same long-lived key "
                "(see docs/s3-compatible.md)",
            )
        ]  # fmt: skip

    def _sts_credentials(self, location: str, prefix: str, *, expires_seconds: int) -> ScopedCredentials:
        bucket, base = split_location(location)
        write_prefix = _join(base, prefix) + ("/" if prefix.endswith("/") else "")
        policy = json.dumps(session_policy(bucket, write_prefix, base))
        duration = max(MIN_STS_SECONDS, expires_seconds)
        sts = self.session.client("sts")
        session_name = re.sub(r"[^\w+=,.@-]", "-", f"cloudkeep-{prefix}")[:32].strip("-") or "cloudkeep-agent"
        if self.agent_role_arn:
            with aws_errors("sts:AssumeRole", str(self.agent_role_arn)):
                creds = sts.assume_role(
                    RoleArn=self.agent_role_arn,
                    RoleSessionName=session_name,
                    Policy=policy,
                    DurationSeconds=duration,
                )["Credentials"]
        else:
            with aws_errors("sts:GetFederationToken", bucket):
                creds = sts.get_federation_token(Name=session_name, Policy=policy, DurationSeconds=duration)[
                    "Credentials"
                ]
        options: dict[str, Any] = {
            "region": self.session.region,
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
            **self.session.checksums,
        }
        if self.session.endpoint_url:
            options["endpoint_url"] = self.session.endpoint_url
        expires_at = creds["Expiration"]
        if isinstance(expires_at, datetime) and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        return ScopedCredentials(
            provider="aws",
            store_url=f"s3://{bucket}/{base}".rstrip("/"),
            options=options,
            expires_at=expires_at,
        )
