"""The server queue's connection info for machines is add-only (SAS), checked on Azurite.

A hostile machine holding it can report, but can neither read, hide nor delete other machines'
reports. Azurite enforces SAS permissions (403), so this runs against the real emulator.
"""

from __future__ import annotations

import json

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.queue import QueueClient

from cloudkeep.errors import CloudkeepError
from cloudkeep.providers.azure.queues import AzureQueueService, _parse_receipt
from cloudkeep.providers.queues import open_queue_from_info
from tests.support.peers import Azurite

pytestmark = pytest.mark.azurite


def test_send_only_info_can_add_but_not_receive_or_delete(azurite: Azurite, unique_name: str) -> None:
    service = AzureQueueService(azurite.connection_string)
    server_side = service.ensure_queue(unique_name)
    info = json.loads(json.dumps(service.connection_info(unique_name, access="send")))  # crosses as JSON
    assert info["access"] == "send"
    machine_side = open_queue_from_info(info)

    machine_side.send("small report")
    big = "x" * (60 * 1024)  # over the inline limit: goes by a payload blob the SAS may create
    machine_side.send(big)

    with pytest.raises(CloudkeepError):
        machine_side.receive(max_messages=10, visibility_timeout=1, wait_seconds=0)
    raw = QueueClient(info["queue_endpoint"], unique_name, credential=info["queue_sas"])
    with pytest.raises(HttpResponseError) as refused:
        raw.peek_messages()
    assert refused.value.status_code == 403

    received = server_side.receive(max_messages=10, visibility_timeout=30, wait_seconds=5)
    assert sorted(m.body for m in received) == sorted(["small report", big])
    victim = received[0]
    with pytest.raises(CloudkeepError):
        machine_side.ack(victim)  # deleting another machine's report is refused …
    message_id, pop_receipt, _raw = _parse_receipt(victim.receipt)
    with pytest.raises(HttpResponseError) as refused:
        raw.delete_message(message_id, pop_receipt)
    assert refused.value.status_code == 403
    for message in received:  # … while the server still can
        server_side.ack(message)
    assert server_side.receive(max_messages=10, visibility_timeout=1, wait_seconds=0) == []


def test_default_info_still_consumes(azurite: Azurite, unique_name: str) -> None:
    service = AzureQueueService(azurite.connection_string)
    service.ensure_queue(unique_name)
    machine_side = open_queue_from_info(json.loads(json.dumps(service.connection_info(unique_name))))
    machine_side.send("command")
    (message,) = machine_side.receive(max_messages=10, visibility_timeout=30, wait_seconds=5)
    assert message.body == "command"
    machine_side.ack(message)


def test_unknown_access_is_refused(azurite: Azurite, unique_name: str) -> None:
    service = AzureQueueService(azurite.connection_string)
    service.ensure_queue(unique_name)
    with pytest.raises(ValueError, match="unknown queue access"):
        service.connection_info(unique_name, access="everything")  # type: ignore[arg-type]
