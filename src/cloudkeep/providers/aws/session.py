"""boto3 clients for one AWS credential (their failures are translated in ``providers/aws/errors``).

Credential mapping: ``{aws_access_key_id, aws_secret_access_key, [aws_session_token],
[role_arn], [external_id]}``, or empty for boto3's default chain (environment, profile,
instance role). With ``role_arn`` the session first assumes that role.

Options: ``region`` (default ``us-east-1``), ``regions`` (inventory default), ``endpoint_url``
(every client — ec2, ssm, sqs, s3, sts, iam — goes there; used for moto and S3-compatible
stores), ``sts_endpoint_url`` (STS elsewhere than ``endpoint_url``), ``ca_bundle`` (a private
CA for HTTPS endpoints), ``request_checksum_calculation`` / ``response_checksum_validation``
(see ``cloudkeep.storage.s3_compat``), ``max_attempts`` (retries for throttling and 5xx,
botocore's *standard* mode with exponential back-off), ``connect_timeout`` / ``read_timeout``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config

from cloudkeep.errors import ConfigurationError
from cloudkeep.providers.aws.errors import aws_errors
from cloudkeep.storage.s3_compat import checksum_settings, config_args


class AwsSession:
    """Builds (and caches) clients per service and region, all sharing one credential and endpoint."""

    def __init__(self, credential: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.region = str(options.get("region") or "us-east-1")
        self.regions = tuple(options.get("regions") or (self.region,))
        self.endpoint_url: str | None = options.get("endpoint_url") or None
        self.sts_endpoint_url: str | None = options.get("sts_endpoint_url") or self.endpoint_url
        self.ca_bundle: str | None = options.get("ca_bundle") or None
        self.store_tuning = {k: int(options[k]) for k in ("list_page_size",) if k in options}
        self.checksums = checksum_settings(
            self.endpoint_url,
            options.get("request_checksum_calculation"),
            options.get("response_checksum_validation"),
        )
        self.config = Config(
            retries={"max_attempts": int(options.get("max_attempts", 6)), "mode": "standard"},
            connect_timeout=float(options.get("connect_timeout", 5)),
            read_timeout=float(options.get("read_timeout", 60)),
            signature_version="v4",
            **config_args(self.checksums),  # type: ignore[arg-type]
        )
        self.credential = dict(credential)
        self._session = self._base_session()
        self._clients: dict[tuple[str, str, int | None], Any] = {}
        self._lock = threading.Lock()
        if not self.endpoint_url:
            for region in {self.region, *self.regions}:
                self._check_region(region)

    def _base_session(self) -> boto3.session.Session:
        keys = {
            k: self.credential[k]
            for k in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
            if self.credential.get(k)
        }
        session = boto3.session.Session(region_name=self.region, **keys)
        role_arn = self.credential.get("role_arn")
        if not role_arn:
            return session
        sts = session.client(
            "sts", endpoint_url=self.sts_endpoint_url, config=self.config, verify=self.ca_bundle
        )
        extra = {"ExternalId": self.credential["external_id"]} if self.credential.get("external_id") else {}
        with aws_errors("sts:AssumeRole", str(role_arn)):
            assumed = sts.assume_role(RoleArn=role_arn, RoleSessionName="cloudkeep-server", **extra)
        creds = assumed["Credentials"]
        return boto3.session.Session(
            region_name=self.region,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )

    def _check_region(self, region: str) -> None:
        known = set(boto3.session.Session().get_available_regions("ec2"))
        if known and region not in known:
            raise ConfigurationError(
                f"unknown AWS region {region!r}", hint=f"use one of: {', '.join(sorted(known))}"
            )

    def client(self, service: str, region: str | None = None, *, retries: int | None = None) -> Any:
        """``retries``: botocore's retries for this client instead of ``max_attempts`` (a caller that
        paces and backs off on its own, or falls back at once, wants none)."""
        region = region or self.region
        with self._lock:
            key = (service, region, retries)
            if key not in self._clients:
                config = self.config
                if retries is not None:
                    config = config.merge(Config(retries={"max_attempts": retries, "mode": "standard"}))
                self._clients[key] = self._session.client(
                    service,  # type: ignore[call-overload]
                    region_name=region,
                    endpoint_url=self.sts_endpoint_url if service == "sts" else self.endpoint_url,
                    config=config,
                    verify=self.ca_bundle,
                )
            return self._clients[key]

    def store_options(self) -> dict[str, Any]:
        """Options for ``open_store("s3://…")`` with this session's credentials."""
        creds = self._session.get_credentials()
        options: dict[str, Any] = {"region": self.region, **self.checksums, **self.store_tuning}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.ca_bundle:
            options["verify"] = self.ca_bundle
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            options["aws_access_key_id"] = frozen.access_key
            options["aws_secret_access_key"] = frozen.secret_key
            if frozen.token:
                options["aws_session_token"] = frozen.token
        return options
