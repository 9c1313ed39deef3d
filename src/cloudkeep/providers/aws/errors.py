"""AWS failures as cloudkeep errors: the one place botocore exceptions are read.

Two translations share the error codes here: ``raise_translated`` / ``aws_errors`` for the
control plane (EC2, SSM, SQS, STS, bucket administration in ``providers/aws``) and
``raise_store_error`` for objects in a repository (``cloudkeep.storage.s3``), where a missing
key is an ``ObjectNotFoundError`` and a failed precondition an ``ObjectExistsError``. It imports
only botocore, so the S3 backend can use it without the rest of the AWS provider.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ReadTimeoutError,
)

from cloudkeep.errors import (
    AuthenticationError,
    CloudkeepError,
    ConfigurationError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    ThrottledError,
    UnreachableError,
)
from cloudkeep.storage.base import ObjectExistsError, ObjectNotFoundError


def sdk_errors() -> tuple[type[Exception], ...]:
    """Any failure a boto3 call raises; callers that report rather than translate catch these."""
    return (ClientError, BotoCoreError, _parser_error())


def _parser_error() -> type[Exception]:
    """botocore's failure for a response that is not AWS's, imported when first needed.

    ``botocore.parsers`` brings urllib3 with it (~0.12 s), and the S3 backend imports this module on
    the main thread before a repository's key derivation starts; its client, built beside that
    derivation, imports the parsers anyway (bench/README.md, stop 29, "No-change rerun on S3")."""
    from botocore.parsers import ResponseParserError

    return ResponseParserError


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
_NOT_IMPLEMENTED_CODES = {"NotImplemented", "501", "XNotImplemented"}

# Object-level answers of S3 (and S3-compatible stores, which answer some with bare HTTP codes).
OBJECT_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
OBJECT_DENIED_CODES = {
    "AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
}  # fmt: skip
_OBJECT_EXISTS_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
BUCKET_NOT_FOUND_CODES = {"404", "NoSuchBucket", "NotFound"}
# The only answers that mean "this bucket has no Object Lock": anything else (denied, throttled,
# unreachable) must not silently turn retention off.
NO_LOCK_CODES = {"ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound"}


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def http_status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_not_implemented(error: ClientError) -> bool:
    """HTTP 501 / ``NotImplemented``: the endpoint lacks the operation; retrying cannot help."""
    return error_code(error) in _NOT_IMPLEMENTED_CODES or http_status(error) == 501


def unparseable_answer(error: Exception) -> str:
    """A short description of an answer botocore could not parse (HTML error page, 404 …)."""
    text = str(error)
    status = re.search(r"status code:?\s*\(?(\d{3})", text) or re.search(r"\b([45]\d\d)\b", text)
    return f"HTTP {status.group(1)}" if status else "an answer that is not an AWS response"


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
            raise ThrottledError(
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
        status = http_status(error)
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
    if isinstance(error, _parser_error()):
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
    except sdk_errors() as error:
        raise_translated(error, action, target)


def raise_store_error(exc: Exception, action: str, *, store: str, bucket: str, where: str) -> NoReturn:
    """Re-raise a failed object operation of the S3 backend (``store`` names it, ``where`` the key)."""
    if isinstance(exc, (EndpointConnectionError, ConnectionError)):
        raise UnreachableError(
            f"{store}: cannot reach the S3 endpoint ({exc})",
            hint="check the endpoint URL, network and proxy settings",
        ) from exc
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if is_not_implemented(exc):
            raise NotSupportedError(
                f"{store}: the endpoint does not implement {action} (HTTP 501 {code})",
                hint="this store lacks the feature; `cloudkeep repository verify` lists what works",
            ) from exc
        if code in OBJECT_NOT_FOUND_CODES:
            raise ObjectNotFoundError(f"{where}: object does not exist") from exc
        if code == "NoSuchBucket":
            raise NotFoundError(f"bucket {bucket} does not exist", hint="create it or fix the URL") from exc
        if code in _OBJECT_EXISTS_CODES:
            raise ObjectExistsError(f"{where}: already exists") from exc
        if code in OBJECT_DENIED_CODES:
            raise PermissionDeniedError(
                f"{where}: access denied for {action}",
                hint="grant this permission to the credentials in use",
            ) from exc
        raise UnreachableError(f"{where}: {action} failed: {code} {exc}") from exc
    if isinstance(exc, _parser_error()):
        raise NotSupportedError(
            f"{store}: the endpoint answered {action} with {unparseable_answer(exc)}, not an S3 response",
            hint="check the endpoint URL; the store may not implement this operation",
        ) from exc
    if isinstance(exc, BotoCoreError):
        raise UnreachableError(f"{store}: {action} failed: {exc}") from exc
    raise exc
