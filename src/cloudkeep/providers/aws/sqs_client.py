"""A small SQS client for machines: the few calls ``SqsQueue`` makes, over SQS's JSON protocol.

A full boto3 client loads SQS's service model and endpoint rule set (and boto3 itself): tens of
MB held by the idle message service on every machine (issue 14). This client speaks the same
wire protocol for the calls a machine makes (send, receive, delete, change visibility, queue
URL and attributes), with botocore's own pieces doing the security-relevant work: ``SigV4Auth``
signs each request, botocore's credential chain (environment, instance role …) supplies and
refreshes the keys, and failures are raised as the botocore exceptions a boto3 client raises
(``ClientError`` with the same error codes, ``EndpointConnectionError``, timeouts), so
``providers/aws/errors`` translates them exactly as before. Method names, arguments and answers
follow boto3's, so ``SqsQueue`` runs on either. The server keeps using boto3.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections.abc import Mapping
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError

MAX_ATTEMPTS = 6  # as botocore's "standard" retry mode configured in AwsSession
MAX_BACKOFF = 20.0
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0  # above SQS's 20 s long poll
# Answers worth another attempt, as botocore's standard retry mode treats them.
_RETRY_CODES = {
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "RequestThrottled", "RequestLimitExceeded", "SlowDown",
    "TransientError", "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
    "InternalError", "ServiceUnavailable",
}  # fmt: skip
_RETRY_STATUS = {500, 502, 503, 504}

CredentialSource = Callable[[], Optional[Credentials]]


def default_credentials() -> Credentials | None:
    """botocore's default chain, as a boto3 client without keys uses (refreshing role credentials)."""
    from botocore.session import get_session  # only machines without explicit keys pay for it

    return get_session().get_credentials()


def _ca_bundle() -> str | None:
    try:
        import certifi  # what botocore verifies against too
    except ImportError:  # pragma: no cover - certifi comes with botocore
        return None
    return str(certifi.where())


class SqsJsonClient:
    """boto3-shaped ``send_message`` / ``receive_message`` / … for one region and endpoint."""

    def __init__(
        self,
        *,
        region: str,
        endpoint_url: str,
        credentials: Mapping[str, Any] | None = None,
        credential_source: CredentialSource = default_credentials,
        max_attempts: int = MAX_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.region = region
        self.endpoint_url = endpoint_url.rstrip("/") + "/"
        keys = dict(credentials or {})
        self._credentials: Credentials | None = None
        if keys.get("aws_access_key_id") and keys.get("aws_secret_access_key"):
            self._credentials = Credentials(
                keys["aws_access_key_id"], keys["aws_secret_access_key"], keys.get("aws_session_token")
            )
        self._credential_source = credential_source
        self.max_attempts = max(1, max_attempts)
        self._sleep = sleep
        self._http = _pool_for(self.endpoint_url)

    def _signer(self) -> SigV4Auth:
        if self._credentials is None:
            self._credentials = self._credential_source()  # asked again until found (role attached later)
        if self._credentials is None:
            raise NoCredentialsError()
        # Refreshable (instance role) credentials renew themselves when SigV4Auth reads them.
        return SigV4Auth(self._credentials, "sqs", self.region)

    def call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One SQS action with botocore's retry rules: connection failures, 5xx and throttling."""
        attempt = 1
        while True:
            try:
                return self._once(operation, params)
            except ClientError as error:
                code = str(error.response["Error"].get("Code", ""))
                status = int(error.response["ResponseMetadata"].get("HTTPStatusCode", 0))
                if attempt >= self.max_attempts or (code not in _RETRY_CODES and status not in _RETRY_STATUS):
                    raise
            except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError):
                if attempt >= self.max_attempts:
                    raise
            self._sleep(random.random() * min(MAX_BACKOFF, 2.0**attempt))
            attempt += 1

    def _once(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        request = AWSRequest(
            method="POST",
            url=self.endpoint_url,
            data=json.dumps(params).encode(),
            headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"AmazonSQS.{operation}"},
        )
        self._signer().add_auth(request)  # signed anew each attempt: a fresh date, fresh credentials
        prepared = request.prepare()
        body = prepared.body if isinstance(prepared.body, bytes) else b""
        try:
            response = self._http.request(
                "POST",
                self.endpoint_url,
                body=body,
                headers=dict(prepared.headers.items()),
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
                retries=False,
                redirect=False,
            )
        except urllib3.exceptions.ConnectTimeoutError as exc:
            raise ConnectTimeoutError(endpoint_url=self.endpoint_url, error=exc) from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise ReadTimeoutError(endpoint_url=self.endpoint_url, error=exc) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise EndpointConnectionError(endpoint_url=self.endpoint_url, error=exc) from exc
        return _answer(operation, response.status, response.headers, response.data)

    # --- the boto3-shaped calls SqsQueue makes ----------------------------------------------------

    def send_message(self, **params: Any) -> dict[str, Any]:
        return self.call("SendMessage", params)

    def receive_message(self, **params: Any) -> dict[str, Any]:
        return self.call("ReceiveMessage", params)

    def delete_message(self, **params: Any) -> dict[str, Any]:
        return self.call("DeleteMessage", params)

    def delete_message_batch(self, **params: Any) -> dict[str, Any]:
        return self.call("DeleteMessageBatch", params)

    def change_message_visibility(self, **params: Any) -> dict[str, Any]:
        return self.call("ChangeMessageVisibility", params)

    def get_queue_url(self, **params: Any) -> dict[str, Any]:
        return self.call("GetQueueUrl", params)

    def get_queue_attributes(self, **params: Any) -> dict[str, Any]:
        return self.call("GetQueueAttributes", params)


def _pool_for(endpoint_url: str) -> urllib3.PoolManager:
    """A connection pool honouring HTTPS_PROXY / NO_PROXY like botocore (machines behind a proxy)."""
    host = urlsplit(endpoint_url).hostname or ""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(urlsplit(endpoint_url).scheme)
    ca_certs = _ca_bundle()
    if proxy and not urllib.request.proxy_bypass(host):
        return urllib3.ProxyManager(proxy, ca_certs=ca_certs)
    return urllib3.PoolManager(ca_certs=ca_certs)


def _answer(operation: str, status: int, headers: Mapping[str, str], data: bytes) -> dict[str, Any]:
    """The parsed answer, or the ``ClientError`` botocore's JSON parser would have raised."""
    try:
        body = json.loads(data) if data else {}
    except ValueError:
        body = None
    if 200 <= status < 300:
        if isinstance(body, dict):
            return body
        raise ResponseParserError(f"{operation}: status code: {status}, the answer is not SQS JSON")
    if not isinstance(body, dict):
        body = {}
    # Same reading as botocore's JSON error parser: ``__type`` ("…#QueueDoesNotExist"), else the
    # status; SQS (awsQueryCompatible) also names the classic code in ``x-amzn-query-error``.
    code = str(body.get("__type") or status).split(":", 1)[0].rsplit("#", 1)[-1]
    query_error = str(headers.get("x-amzn-query-error", "")).split(";")
    if len(query_error) == 2 and query_error[0]:
        code = query_error[0]
    metadata: dict[str, Any] = {"HTTPStatusCode": status}
    if headers.get("x-amzn-requestid"):
        metadata["RequestId"] = headers["x-amzn-requestid"]
    message = body.get("message", body.get("Message", ""))
    answer: Any = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": metadata}
    raise ClientError(answer, operation)
