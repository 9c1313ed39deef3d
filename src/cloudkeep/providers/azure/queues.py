"""Azure Queue Storage with the semantics the other queues have.

* Messages are base64-encoded text (what other Azure tools expect), which leaves 48 KiB of raw
  payload in Azure's 64 KiB limit; a larger body goes to a blob in ``cloudkeep-queue-payloads``
  and the message carries ``ck-blob-ref:<blob>`` instead — transparently for sender and receiver.
  The blob is deleted with the message.
* No long polling exists: ``receive`` polls with back-off up to ``wait_seconds``.
* Dead-lettering is ours: ``max_receive_count`` is kept in the queue's metadata; a message
  dequeued more often is moved to ``<name>-dlq`` on the next receive.
* ``connection_info`` hands a machine SAS tokens limited to its queue, the dead-letter queue and
  the payload container, so the machine never holds the account key. For the server queue
  (``access="send"``) the tokens only add messages and create payload blobs: a hostile machine
  cannot read, hide or delete other machines' reports.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas
from azure.storage.queue import (
    BinaryBase64DecodePolicy,
    BinaryBase64EncodePolicy,
    QueueClient,
    QueueSasPermissions,
    QueueServiceClient,
    generate_queue_sas,
)

from cloudkeep.compat import UTC
from cloudkeep.errors import ConfigurationError, NotFoundError
from cloudkeep.providers.azure.errors import azure_errors
from cloudkeep.providers.azure.session import StorageAccount
from cloudkeep.providers.base import (
    Queue,
    QueueAccess,
    QueueService,
    ReceivedMessage,
    dead_letter_queue_name,
)
from cloudkeep.providers.queues import poll_with_backoff

PAYLOAD_CONTAINER = "cloudkeep-queue-payloads"
INLINE_LIMIT = 48 * 1024  # raw bytes that fit in 64 KiB once base64-encoded
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
REFERENCE = "ck-blob-ref:"
_CODEC: dict[str, Any] = {
    "message_encode_policy": BinaryBase64EncodePolicy(),
    "message_decode_policy": BinaryBase64DecodePolicy(),
}


class AzureQueue(Queue):
    max_message_bytes = MAX_PAYLOAD_BYTES  # by reference above 48 KiB

    def __init__(
        self,
        client: QueueClient,
        dead_letter: QueueClient,
        payloads: Any,
        name: str,
        max_receive_count: int | None,
    ) -> None:
        self.client = client
        self.dead_letter_client = dead_letter
        self.payloads = payloads  # ContainerClient
        self.name = name
        self.max_receive_count = max_receive_count

    def _encode(self, body: str) -> bytes:
        data = body.encode()
        if len(data) > self.max_message_bytes:
            raise ConfigurationError(
                f"message of {len(data)} bytes exceeds the {self.max_message_bytes}-byte limit"
            )
        if len(data) <= INLINE_LIMIT and not body.startswith(REFERENCE):
            return data
        blob = f"{self.name}/{uuid.uuid4().hex}"
        with azure_errors("Microsoft.Storage/.../blobs/write", f"{PAYLOAD_CONTAINER}/{blob}"):
            self.payloads.upload_blob(blob, data)
        return f"{REFERENCE}{blob}".encode()

    def send(self, body: str, *, delay_seconds: int = 0) -> str:
        content = self._encode(body)
        with azure_errors("Microsoft.Storage/.../queues/messages/add", self.name):
            sent = self.client.send_message(content, visibility_timeout=delay_seconds or None)
        return str(sent.id)

    def _max_receives(self) -> int | None:
        if self.max_receive_count is None:
            with azure_errors("Microsoft.Storage/.../queues/read", self.name):
                metadata = self.client.get_queue_properties().metadata or {}
            self.max_receive_count = int(metadata.get("maxreceivecount", 0)) or 0
        return self.max_receive_count or None

    def _receive_once(self, max_messages: int, visibility_timeout: int) -> list[ReceivedMessage]:
        limit = self._max_receives()
        with azure_errors("Microsoft.Storage/.../queues/messages/process", self.name):
            batch = list(
                self.client.receive_messages(
                    messages_per_page=max(1, min(max_messages, 32)),
                    max_messages=max(1, min(max_messages, 32)),
                    visibility_timeout=visibility_timeout,
                )
            )
        received = []
        for message in batch:
            content = message.content
            raw = content if isinstance(content, str) else bytes(content).decode(errors="replace")
            if limit is not None and (message.dequeue_count or 0) > limit:  # our redrive policy
                self._move_to_dead_letter(message.id, str(message.pop_receipt), raw)
                continue
            body = self._resolve(raw)
            if body is None:  # payload blob gone: the message was already handled
                self._delete(message.id, str(message.pop_receipt))
                continue
            received.append(
                ReceivedMessage(
                    body=body, receipt=_receipt(message.id, str(message.pop_receipt), raw),
                    message_id=str(message.id),
                    receive_count=int(message.dequeue_count or 1), sent_at=message.inserted_on,
                )
            )  # fmt: skip
        return received

    def _resolve(self, raw: str) -> str | None:
        if not raw.startswith(REFERENCE):
            return raw
        try:
            with azure_errors("Microsoft.Storage/.../blobs/read", raw[len(REFERENCE) :]):
                return bytes(self.payloads.download_blob(raw[len(REFERENCE) :]).readall()).decode()
        except NotFoundError:
            return None

    def receive(
        self, *, max_messages: int = 10, visibility_timeout: int = 30, wait_seconds: float = 0.0
    ) -> list[ReceivedMessage]:
        return poll_with_backoff(lambda: self._receive_once(max_messages, visibility_timeout), wait_seconds)

    def _delete(self, message_id: str, pop_receipt: str) -> None:
        with azure_errors(
            "Microsoft.Storage/.../queues/messages/delete", self.name, ignore=(ResourceNotFoundError,)
        ):
            self.client.delete_message(message_id, pop_receipt)

    def ack(self, message: ReceivedMessage) -> None:
        message_id, pop_receipt, raw = _parse_receipt(message.receipt)
        self._delete(message_id, pop_receipt)
        if raw.startswith(REFERENCE):
            with azure_errors(
                "Microsoft.Storage/.../blobs/delete", raw[len(REFERENCE) :], ignore=(ResourceNotFoundError,)
            ):
                self.payloads.delete_blob(raw[len(REFERENCE) :])

    def extend_visibility(self, message: ReceivedMessage, seconds: int) -> None:
        message_id, pop_receipt, raw = _parse_receipt(message.receipt)
        with azure_errors("Microsoft.Storage/.../queues/messages/write", self.name):
            updated = self.client.update_message(message_id, pop_receipt, visibility_timeout=seconds)
        message.receipt = _receipt(message_id, str(updated.pop_receipt), raw)

    def _move_to_dead_letter(self, message_id: str, pop_receipt: str, raw: str) -> None:
        with azure_errors("Microsoft.Storage/.../queues/messages/add", dead_letter_queue_name(self.name)):
            self.dead_letter_client.send_message(raw.encode())  # a reference keeps its blob
        self._delete(message_id, pop_receipt)

    def dead_letter(self, message: ReceivedMessage, reason: str) -> None:
        """Azure messages carry no attributes, so the reason is not stored (callers log it)."""
        message_id, pop_receipt, reference = _parse_receipt(message.receipt)
        self._move_to_dead_letter(message_id, pop_receipt, reference or self._encode(message.body).decode())

    def approximate_count(self) -> int:
        with azure_errors("Microsoft.Storage/.../queues/read", self.name):
            return int(self.client.get_queue_properties().approximate_message_count or 0)


def _receipt(message_id: str, pop_receipt: str, raw: str) -> str:
    reference = raw if raw.startswith(REFERENCE) else ""
    return f"{message_id}\n{pop_receipt}\n{reference}"


def _parse_receipt(receipt: str) -> tuple[str, str, str]:
    message_id, pop_receipt, reference = receipt.split("\n", 2)
    return message_id, pop_receipt, reference


class AzureQueueService(QueueService):
    def __init__(self, account: StorageAccount | str, *, machine_sas_days: int = 30) -> None:
        self.account = StorageAccount.from_connection_string(account) if isinstance(account, str) else account
        self.machine_sas_days = machine_sas_days
        self.service = QueueServiceClient(
            self.account.queue_endpoint, credential=self.account.credential, **_CODEC
        )
        self.blobs = BlobServiceClient(self.account.blob_endpoint, credential=self.account.credential)
        self._payloads_ready = False

    def _payloads(self) -> Any:
        container = self.blobs.get_container_client(PAYLOAD_CONTAINER)
        if not self._payloads_ready:
            with azure_errors(
                "Microsoft.Storage/.../containers/write", PAYLOAD_CONTAINER, ignore=(ResourceExistsError,)
            ):
                container.create_container()
            self._payloads_ready = True
        return container

    def _queue(self, name: str, max_receive_count: int | None = None) -> AzureQueue:
        return AzureQueue(
            self.service.get_queue_client(name, **_CODEC),
            self.service.get_queue_client(dead_letter_queue_name(name), **_CODEC),
            self._payloads(),
            name,
            max_receive_count,
        )

    def ensure_queue(self, name: str, *, max_receive_count: int = 5) -> AzureQueue:
        for queue, metadata in (
            (dead_letter_queue_name(name), {}),
            (name, {"maxreceivecount": str(max_receive_count)}),
        ):
            client = self.service.get_queue_client(queue, **_CODEC)
            with azure_errors("Microsoft.Storage/.../queues/write", queue):
                try:
                    client.create_queue(metadata=metadata)
                except ResourceExistsError:
                    client.set_queue_metadata(metadata)
        return self._queue(name, max_receive_count)

    def get_queue(self, name: str) -> AzureQueue:
        try:
            with azure_errors("Microsoft.Storage/.../queues/read", name):
                metadata = self.service.get_queue_client(name, **_CODEC).get_queue_properties().metadata or {}
        except NotFoundError:
            raise NotFoundError(
                f"Azure queue {name!r} does not exist", hint="create it with ensure_queue"
            ) from None
        return self._queue(name, int(metadata.get("maxreceivecount", 0)))

    def delete_queue(self, name: str) -> None:
        for queue in (name, dead_letter_queue_name(name)):
            with azure_errors("Microsoft.Storage/.../queues/delete", queue, ignore=(ResourceNotFoundError,)):
                self.service.delete_queue(queue)

    def connection_info(self, name: str, *, access: QueueAccess = "consume") -> dict[str, Any]:
        """SAS tokens for a machine; ``access="send"`` (the server queue) may only add messages.

        Send-only: add on the queue (no read/process: it can neither peek at nor delete other
        machines' reports) and create on the payload container (no read/list/delete).
        """
        queue = self.get_queue(name)
        key = self.account.require_key("handing a machine its queue")
        expiry = datetime.now(UTC) + timedelta(days=self.machine_sas_days)
        if access == "send":
            rights = QueueSasPermissions(add=True)
            payload_rights = ContainerSasPermissions(create=True)
        elif access == "consume":
            rights = QueueSasPermissions(read=True, add=True, update=True, process=True)
            payload_rights = ContainerSasPermissions(read=True, write=True, create=True, delete=True)
        else:
            raise ValueError(f"unknown queue access {access!r}: use 'consume' or 'send'")

        def queue_sas(queue_name: str) -> str:
            return generate_queue_sas(
                self.account.account_name, queue_name, key, permission=rights, expiry=expiry
            )

        payload_sas = generate_container_sas(
            self.account.account_name, PAYLOAD_CONTAINER, account_key=key, expiry=expiry,
            permission=payload_rights,
        )  # fmt: skip
        return {
            "kind": "azure",
            "name": name,
            "queue_endpoint": self.account.queue_endpoint,
            "blob_endpoint": self.account.blob_endpoint,
            "queue_sas": queue_sas(name),
            "dead_letter_sas": queue_sas(dead_letter_queue_name(name)),
            "payload_sas": payload_sas,
            "max_receive_count": queue.max_receive_count,
            "expires_at": expiry.isoformat(),
            "access": access,
        }


def open_azure_queue(info: Mapping[str, Any]) -> Queue:
    name = str(info["name"])

    def client(queue_name: str, sas: str) -> QueueClient:
        return QueueClient(str(info["queue_endpoint"]), queue_name, credential=sas, **_CODEC)

    container = BlobServiceClient(str(info["blob_endpoint"]), credential=str(info["payload_sas"]))
    return AzureQueue(
        client(name, str(info["queue_sas"])),
        client(dead_letter_queue_name(name), str(info["dead_letter_sas"])),
        container.get_container_client(PAYLOAD_CONTAINER),
        name,
        int(info.get("max_receive_count") or 0),
    )
