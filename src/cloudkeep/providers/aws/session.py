"""boto3 clients for one AWS credential, and translation of AWS failures into cloudkeep errors.

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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError

from cloudkeep.errors import (
    AuthenticationError,
    CloudkeepError,
    ConfigurationError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    UnreachableError,
)
from cloudkeep.storage.s3_compat import checksum_settings, config_args, is_not_implemented, unparseable_answer

_AUTH_CODES = {
    "AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
    "InvalidAccessKeyId", "IncompleteSignature", "MissingAuthenticationToken",
}  # fmt: skip
_EXPIRED_CODES = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
_DENIED_CODES = {
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess",
    "AuthorizationError", "OptInRequired",
}  # fmt: skip
_THROTTLE_CODES = {
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "SlowDown", "RequestThrottled", "RequestThrottledException",
}  # fmt: skip
_NOT_FOUND_CODES = {
    "InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed", "InvalidInstanceId", "NoSuchBucket",
    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "InvalidCommandId",
    "InvocationDoesNotExist",
}  # fmt: skip


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def raise_translated(error: Exception, action: str, target: str = "") -> NoReturn:
    """Re-raise an AWS failure as the cloudkeep error an administrator can act on."""
    where = f" on {target}" if target else ""
    if isinstance(error, ClientError):
        code = error_code(error)
        message = error.response.get("Error", {}).get("Message", "") or code
        if code in _EXPIRED_CODES:
            raise AuthenticationError(
                f"AWS credentials expired ({action}{where}): {message}",
                hint="refresh the temporary credentials or update the cloud credential",
            ) from error
        if code in _AUTH_CODES:
            raise AuthenticationError(
                f"AWS rejected the credentials ({action}{where}): {code}",
                hint="check the access key id and secret key of the cloud credential",
            ) from error
        if code in _DENIED_CODES:
            raise PermissionDeniedError(
                f"access denied for {action}{where}",
                hint="grant this action to the cloud credential's IAM user/role (see docs/permissions.md)",
            ) from error
        if code in _THROTTLE_CODES:
            raise UnreachableError(
                f"AWS kept throttling {action}{where} after retries ({code})",
                hint="reduce rescan concurrency or retry later",
            ) from error
        if code in _NOT_FOUND_CODES:
            raise NotFoundError(f"{action}{where}: {message}") from error
        if is_not_implemented(error):
            raise NotSupportedError(
                f"the endpoint does not implement {action}{where} (HTTP 501 {code})",
                hint="this S3-compatible store lacks the feature; retrying will not help",
            ) from error
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status >= 500:
            raise UnreachableError(
                f"AWS failed {action}{where} with HTTP {status} after retries: {message}",
                hint="the service is having trouble; retry later",
            ) from error
        raise CloudkeepError(f"AWS refused {action}{where}: {code}: {message}") from error
    if isinstance(error, NoCredentialsError):
        raise AuthenticationError(
            "no AWS credentials found",
            hint="set access keys in the cloud credential or attach an instance role",
        ) from error
    if isinstance(error, NoRegionError):
        raise ConfigurationError("no AWS region configured", hint="set the provider option region") from error
    if isinstance(error, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        raise UnreachableError(
            f"cannot reach AWS for {action}{where}: {error}",
            hint="check the endpoint URL / region and the network path to AWS",
        ) from error
    if isinstance(error, ResponseParserError):
        raise NotSupportedError(
            f"the endpoint answered {action}{where} with {unparseable_answer(error)}, not an AWS response",
            hint="the endpoint likely does not implement this service (an S3-compatible store without "
            "STS, EC2 …); check endpoint_url / sts_endpoint_url",
        ) from error
    if isinstance(error, BotoCoreError):
        raise CloudkeepError(f"AWS client error during {action}{where}: {error}") from error
    raise error


@contextmanager
def aws_errors(action: str, target: str = "") -> Iterator[None]:
    """Wrap one AWS call: ``with aws_errors("ec2:DescribeInstances", region): …``."""
    try:
        yield
    except (ClientError, BotoCoreError, ResponseParserError) as error:
        raise_translated(error, action, target)


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
        self._clients: dict[tuple[str, str], Any] = {}
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

    def client(self, service: str, region: str | None = None) -> Any:
        region = region or self.region
        with self._lock:
            key = (service, region)
            if key not in self._clients:
                self._clients[key] = self._session.client(
                    service,  # type: ignore[call-overload]
                    region_name=region,
                    endpoint_url=self.sts_endpoint_url if service == "sts" else self.endpoint_url,
                    config=self.config,
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
