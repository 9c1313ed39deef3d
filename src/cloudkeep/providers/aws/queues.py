"""SQS queues: classic 256 KiB limit, a dead-letter queue by redrive policy, long polling.

``connection_info`` gives a machine the queue URL, region and endpoint. On EC2 the machine
authenticates with its instance role; credentials are included only when the provider is given
``machine_credentials`` explicitly (labs, moto).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from cloudkeep.compat import UTC
from cloudkeep.errors import ConfigurationError, NotFoundError
from cloudkeep.providers.aws.errors import aws_errors, error_code
from cloudkeep.providers.base import (
    Queue,
    QueueAccess,
    QueueService,
    ReceivedMessage,
    dead_letter_queue_name,
)

if TYPE_CHECKING:  # the machine side opens queues without boto3 (sqs_client)
    from cloudkeep.providers.aws.session import AwsSession

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 262_144
MAX_WAIT_SECONDS = 20  # SQS long-poll ceiling; longer waits loop
_MISSING = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


class SqsQueue(Queue):
    max_message_bytes = MAX_MESSAGE_BYTES

    def __init__(self, client: Any, name: str, url: str, dead_letter_url: str | None = None) -> None:
        self.client = client
        self.name = name
        self.url = url
        self.dead_letter_url = dead_letter_url

    def send(self, body: str, *, delay_seconds: int = 0) -> str:
        size = len(body.encode())
        if size > self.max_message_bytes:
            raise ConfigurationError(
                f"message of {size} bytes exceeds SQS's {self.max_message_bytes}-byte limit",
                hint="send large payloads by reference (store them and send the key)",
            )
        with aws_errors("sqs:SendMessage", self.name):
            return str(
                self.client.send_message(QueueUrl=self.url, MessageBody=body, DelaySeconds=delay_seconds)[
                    "MessageId"
                ]
            )

    def receive(
        self, *, max_messages: int = 10, visibility_timeout: int = 30, wait_seconds: float = 0.0
    ) -> list[ReceivedMessage]:
        deadline = time.monotonic() + wait_seconds
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            with aws_errors("sqs:ReceiveMessage", self.name):
                response = self.client.receive_message(
                    QueueUrl=self.url,
                    MaxNumberOfMessages=max(1, min(max_messages, 10)),
                    VisibilityTimeout=visibility_timeout,
                    WaitTimeSeconds=min(MAX_WAIT_SECONDS, math.ceil(remaining)),
                    MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                )
            messages = response.get("Messages", [])
            if messages or deadline - time.monotonic() <= 0:
                return [_received(m) for m in messages]

    def ack(self, message: ReceivedMessage) -> None:
        with aws_errors("sqs:DeleteMessage", self.name):
            self.client.delete_message(QueueUrl=self.url, ReceiptHandle=message.receipt)

    def ack_many(self, messages: list[ReceivedMessage]) -> None:
        """DeleteMessageBatch, 10 entries a call (SQS's maximum); a failed entry is redelivered later."""
        for start in range(0, len(messages), 10):
            entries = [
                {"Id": str(n), "ReceiptHandle": message.receipt}
                for n, message in enumerate(messages[start : start + 10])
            ]
            with aws_errors("sqs:DeleteMessageBatch", self.name):
                response = self.client.delete_message_batch(QueueUrl=self.url, Entries=entries)
            for failed in response.get("Failed", []):
                log.warning("sqs %s: could not delete a message: %s", self.name, failed.get("Message"))

    def extend_visibility(self, message: ReceivedMessage, seconds: int) -> None:
        with aws_errors("sqs:ChangeMessageVisibility", self.name):
            self.client.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=message.receipt, VisibilityTimeout=seconds
            )

    def dead_letter(self, message: ReceivedMessage, reason: str) -> None:
        if not self.dead_letter_url:
            with aws_errors("sqs:GetQueueUrl", dead_letter_queue_name(self.name)):
                self.dead_letter_url = self.client.get_queue_url(QueueName=dead_letter_queue_name(self.name))[
                    "QueueUrl"
                ]
        with aws_errors("sqs:SendMessage", dead_letter_queue_name(self.name)):
            self.client.send_message(
                QueueUrl=self.dead_letter_url,
                MessageBody=message.body,
                MessageAttributes={"cloudkeep-reason": {"DataType": "String", "StringValue": reason[:1024]}},
            )
        self.ack(message)

    def approximate_count(self) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        with aws_errors("sqs:GetQueueAttributes", self.name):
            attributes = self.client.get_queue_attributes(QueueUrl=self.url, AttributeNames=names)[
                "Attributes"
            ]
        return sum(int(attributes.get(n, 0)) for n in names)


def _received(message: Mapping[str, Any]) -> ReceivedMessage:
    attributes = message.get("Attributes", {})
    sent = attributes.get("SentTimestamp")
    return ReceivedMessage(
        body=message["Body"],
        receipt=message["ReceiptHandle"],
        message_id=message["MessageId"],
        receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
        sent_at=datetime.fromtimestamp(int(sent) / 1000, UTC) if sent else None,
    )


class SqsQueueService(QueueService):
    def __init__(self, session: AwsSession, machine_credentials: Mapping[str, Any] | None = None) -> None:
        self.session = session
        self.machine_credentials = dict(machine_credentials or {})

    @property
    def client(self) -> Any:
        return self.session.client("sqs")

    def _create(self, name: str, attributes: dict[str, str]) -> str:
        with aws_errors("sqs:CreateQueue", name):
            try:
                return str(self.client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])
            except ClientError as error:
                if error_code(error) not in ("QueueAlreadyExists", "QueueNameExists"):
                    raise
                url = str(self.client.get_queue_url(QueueName=name)["QueueUrl"])
                self.client.set_queue_attributes(QueueUrl=url, Attributes=attributes)
                return url

    def ensure_queue(self, name: str, *, max_receive_count: int = 5) -> SqsQueue:
        base = {"MaximumMessageSize": str(MAX_MESSAGE_BYTES), "MessageRetentionPeriod": str(4 * 86400)}
        dlq_url = self._create(
            dead_letter_queue_name(name), {**base, "MessageRetentionPeriod": str(14 * 86400)}
        )
        with aws_errors("sqs:GetQueueAttributes", dead_letter_queue_name(name)):
            dlq_arn = self.client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)})
        url = self._create(name, {**base, "VisibilityTimeout": "30", "RedrivePolicy": redrive})
        return SqsQueue(self.client, name, url, dlq_url)

    def _url(self, name: str) -> str:
        with aws_errors("sqs:GetQueueUrl", name):
            try:
                return str(self.client.get_queue_url(QueueName=name)["QueueUrl"])
            except ClientError as error:
                if error_code(error) in _MISSING:
                    raise NotFoundError(
                        f"SQS queue {name!r} does not exist", hint="create it with ensure_queue"
                    ) from None
                raise

    def get_queue(self, name: str) -> SqsQueue:
        return SqsQueue(self.client, name, self._url(name))

    def delete_queue(self, name: str) -> None:
        for queue in (name, dead_letter_queue_name(name)):
            try:
                url = self._url(queue)
            except NotFoundError:
                continue
            with aws_errors("sqs:DeleteQueue", queue):
                self.client.delete_queue(QueueUrl=url)

    def connection_info(self, name: str, *, access: QueueAccess = "consume") -> dict[str, Any]:
        """The queue URL and (off EC2) credentials; ``access`` is not expressible per URL on SQS.

        Send-only access to the server queue is enforced by IAM, not by this dict: the machines'
        role (or the ``machine_credentials`` user) should be allowed ``sqs:SendMessage`` only on
        ``ck-<server id>-server`` (and ``sqs:ReceiveMessage``/``DeleteMessage``/``ChangeMessage
        Visibility`` only on its own queue), e.g. with a queue policy whose ``Principal`` is that
        role. moto does not enforce IAM or queue policies, so this cannot be tested locally.
        """
        info: dict[str, Any] = {
            "kind": "aws",
            "name": name,
            "queue_url": self._url(name),
            "region": self.session.region,
            "endpoint_url": self.session.endpoint_url,
        }
        if self.machine_credentials:
            info["credentials"] = self.machine_credentials
        return info


def open_sqs_queue(info: Mapping[str, Any]) -> Queue:
    """The machine's side of a queue: the light ``SqsJsonClient`` (no boto3), same calls and errors."""
    from cloudkeep.providers.aws.sqs_client import SqsJsonClient

    queue_url = str(info["queue_url"])
    # Without an explicit endpoint, the queue URL's host is the region's SQS endpoint.
    endpoint = info.get("endpoint_url") or "{0.scheme}://{0.netloc}".format(urlsplit(queue_url))
    client = SqsJsonClient(
        region=str(info["region"]), endpoint_url=str(endpoint), credentials=info.get("credentials")
    )
    return SqsQueue(client, str(info["name"]), queue_url)
