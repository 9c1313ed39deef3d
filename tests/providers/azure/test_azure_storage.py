"""Azure Blob SAS on Azurite, which enforces SAS (signature, permissions, expiry), and the
queue's by-reference path for payloads over Azure's 64 KiB message limit."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.queue import QueueClient

from cloudkeep.errors import PermissionDeniedError
from cloudkeep.providers.azure.provider import AzureProvider
from cloudkeep.providers.azure.queues import PAYLOAD_CONTAINER, REFERENCE


def _status(url: str, method: str = "GET", data: bytes | None = None) -> int:
    headers = {"x-ms-blob-type": "BlockBlob"} if method == "PUT" else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_blob_sas_urls_are_enforced(azure: AzureProvider, unique_name: str) -> None:
    storage = azure.storage
    storage.ensure_container(unique_name)
    storage.ensure_container(unique_name)  # idempotent
    storage.open_store(f"{unique_name}/dist").put("agent.tar.gz", b"payload")
    url = storage.signed_url(f"{unique_name}/dist", "agent.tar.gz", method="GET", expires_seconds=300)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"payload"
    assert _status(url.replace("agent.tar.gz", "other.tar.gz")) == 403  # another blob
    signature = url.split("sig=")[1].split("&")[0]
    assert (
        _status(url.replace(signature, "A" + signature[1:] if signature[0] != "A" else "B" + signature[1:]))
        == 403
    )
    assert _status(url, method="PUT", data=b"evil") == 403  # read-only SAS
    expired = storage.signed_url(f"{unique_name}/dist", "agent.tar.gz", method="GET", expires_seconds=-60)
    assert _status(expired) == 403
    put = storage.signed_url(unique_name, "upload/result.txt", method="PUT", expires_seconds=60)
    assert _status(put, method="PUT", data=b"done") == 201
    assert storage.open_store(unique_name).get("upload/result.txt") == b"done"


def test_compromised_machine_scoped_sas_works_only_until_it_expires(
    azure: AzureProvider, unique_name: str
) -> None:
    azure.storage.ensure_container(unique_name)
    creds = azure.storage.scoped_credentials(f"{unique_name}/repo", "machines/web1/", expires_seconds=3600)
    assert creds.provider == "azure" and creds.store_url == f"azure://{unique_name}/repo"
    assert "AccountKey" not in str(creds.options) and "sig=" in creds.options["credential"]
    store = creds.open_store()
    store.put("machines/web1/pack", b"data")
    assert store.get("machines/web1/pack") == b"data"
    # Agents cannot lock anything (no `w`, no `i`: docs/security.md), not even to extend a lock.
    azure.storage.open_store(f"{unique_name}/repo").put("machines/db1/pack", b"older")
    until = datetime.now(UTC) + timedelta(days=30)
    with pytest.raises(PermissionDeniedError):
        store.extend_retention("machines/db1/pack", until)
    assert store.stat("machines/db1/pack").retain_until is None  # type: ignore[union-attr]
    short = azure.storage.scoped_credentials(f"{unique_name}/repo", "machines/web1/", expires_seconds=1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and short.expires_at.timestamp() > time.time() - 1:
        time.sleep(0.2)
    with pytest.raises(PermissionDeniedError):
        short.open_store().put("machines/web1/late", b"late")


def test_large_queue_payload_goes_by_blob_reference(azure: AzureProvider, unique_name: str) -> None:
    queue = azure.queues.ensure_queue(unique_name)
    body = "z" * 70_000
    queue.send(body)
    account = azure.session.storage
    assert account is not None
    raw = QueueClient(account.queue_endpoint, unique_name, credential=account.credential).peek_messages()
    import base64

    assert base64.b64decode(raw[0].content).decode().startswith(REFERENCE)
    [message] = queue.receive(wait_seconds=5)
    assert message.body == body
    blob_name = message.receipt.split("\n")[2][len(REFERENCE) :]
    payloads = azure.queues.blobs.get_container_client(PAYLOAD_CONTAINER)
    assert payloads.get_blob_client(blob_name).exists()
    queue.ack(message)
    assert not payloads.get_blob_client(blob_name).exists()
    assert queue.approximate_count() == 0
