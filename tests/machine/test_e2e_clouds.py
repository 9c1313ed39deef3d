"""End to end over cloud queues: SQS on the moto server and Azure Queue Storage on Azurite.

The machine services are real subprocesses; the dispatcher and the server consumers use the
AWS provider against moto over HTTP. The queue outage goes through ``FaultProxy`` (a loopback
HTTP proxy answering 503 for a while) placed between the machine and moto.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from cloudkeep.protocol import make_envelope, sign_envelope
from cloudkeep.providers.base import dead_letter_queue_name
from cloudkeep.server.db.models import CommandRecord
from cloudkeep.server.dispatcher import Dispatcher, ensure_consumers
from tests.machine.harness import Harness, MachineHandle, wait_for
from tests.support.fault_proxy import FaultProxy
from tests.support.peers import Azurite, MotoServer
from tests.support.ssm_standin import SsmStandIn

pytestmark = pytest.mark.slow
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture
def sqs_harness(tmp_path: Path, moto_server: MotoServer) -> Iterator[Harness]:
    options = {"endpoint_url": moto_server.endpoint, "region": "us-east-1", "machine_credentials": KEYS}
    h = Harness.create(tmp_path, provider_kind="aws", secret=KEYS, options=options, heartbeat_timeout=30)
    yield h
    h.close()


def _via(proxy: FaultProxy, info: dict[str, object]) -> dict[str, object]:
    """The same queue, reached through the proxy."""
    target = urlsplit(proxy.endpoint)
    rewritten = dict(info)
    for key in ("endpoint_url", "queue_url"):
        if rewritten.get(key):
            parts = urlsplit(str(rewritten[key]))
            rewritten[key] = urlunsplit(parts._replace(netloc=target.netloc))
    return rewritten


def _start(harness: Harness, machine: MachineHandle) -> None:
    ensure_consumers(harness.ctx)
    machine.start()
    wait_for(lambda: harness.heartbeat_age(machine) is not None, timeout=30, what="first heartbeat over SQS")


@pytest.mark.moto
def test_sqs_ping_and_run_script_round_trip(sqs_harness: Harness) -> None:
    machine = sqs_harness.add_machine("ec2a")
    _start(sqs_harness, machine)
    dispatcher = Dispatcher(sqs_harness.ctx)
    assert (
        dispatcher.call(machine.row_id, "ping", {}, timeout=30)["services"]["message-service"]["state"]
        == "running"
    )
    command_id = dispatcher.send(machine.row_id, "run_script", {"script": "echo over-sqs"})
    assert dispatcher.wait(command_id, timeout=30)["stdout"] == "over-sqs\n"
    assert sqs_harness.record(command_id).channel == "queue"


@pytest.mark.moto
def test_sqs_oversized_message_is_dead_lettered(sqs_harness: Harness) -> None:
    """SQS accepts 256 KiB, so a message over the protocol's 64 KiB reaches the machine: refused there."""
    machine = sqs_harness.add_machine("ec2b")
    _start(sqs_harness, machine)
    envelope = make_envelope("run_script", {"script": "true"}, sender=sqs_harness.ctx.server_id,
                             recipient=machine.row_id)  # fmt: skip
    data = json.loads(sign_envelope(envelope, sqs_harness.ctx.signing_key))
    data["padding"] = "x" * 70_000
    machine.agent_queue().send(json.dumps(data))
    dlq = sqs_harness.provider.queues.get_queue(dead_letter_queue_name(machine.row_queue_name))
    wait_for(lambda: dlq.receive(max_messages=1, visibility_timeout=60), timeout=30, what="the dead letter")
    assert "rejected message" in machine.output() and "oversized" in machine.output()


@pytest.mark.moto
def test_sqs_outage_is_ridden_out_and_nothing_is_lost(sqs_harness: Harness) -> None:
    machine = sqs_harness.add_machine("ec2c")
    proxy = FaultProxy(str(machine.config.agent_queue["endpoint_url"]))
    try:
        config = dataclasses.replace(
            machine.config,
            agent_queue=_via(proxy, machine.config.agent_queue),
            server_queue=_via(proxy, machine.config.server_queue),
        )
        config.write()
        machine.config = config
        _start(sqs_harness, machine)
        logged = len(machine.output())
        proxy.fail_method("POST", 503)  # the queue service is down (every SQS action is a POST) ...
        marker = machine.sim.root / "runs.log"
        dispatcher = Dispatcher(sqs_harness.ctx)
        command_id = dispatcher.send(
            machine.row_id, "run_script", {"script": f"echo ran >> {marker}; echo ok"}
        )

        # ... until the machine has given up a whole receive (every retry refused) and backs off: the
        # outage is as long as the machine's own retries, not a fixed count of refusals (60 took ~100 s).
        def gave_up() -> bool:
            return "receive failed" in machine.output()[logged:]

        wait_for(gave_up, timeout=180, what="a receive to fail for good")
        proxy.clear()
        assert proxy.injected >= 6  # a receive's six attempts (sqs_client.MAX_ATTEMPTS), at least
        assert dispatcher.wait(command_id, timeout=180)["stdout"] == "ok\n"
        assert marker.read_text() == "ran\n"
        wait_for(lambda: "reachable again" in machine.output(), timeout=60, what="the reconnect to be logged")
        with sqs_harness.ctx.db() as session:
            record = session.get(CommandRecord, command_id)
            assert record is not None and record.state == "done"
    finally:
        proxy.close()


AZURE_CREDENTIAL = {"tenant_id": "t", "client_id": "c", "client_secret": "s", "subscription_id": "sub"}


@pytest.fixture
def azure_harness(tmp_path: Path, azurite: Azurite) -> Iterator[Harness]:
    options = {"storage_connection_string": azurite.connection_string, "retry_backoff_factor": 0.01}
    h = Harness.create(
        tmp_path, provider_kind="azure", secret=AZURE_CREDENTIAL, options=options, heartbeat_timeout=30
    )
    yield h
    h.close()


@pytest.mark.azurite
def test_azure_queue_round_trip(azure_harness: Harness) -> None:
    machine = azure_harness.add_machine("vm1")
    _start(azure_harness, machine)
    dispatcher = Dispatcher(azure_harness.ctx)
    assert dispatcher.call(machine.row_id, "ping", {}, timeout=30)["version"]
    command_id = dispatcher.send(machine.row_id, "run_script", {"script": "echo over-azure"})
    assert dispatcher.wait(command_id, timeout=30)["stdout"] == "over-azure\n"
    assert azure_harness.record(command_id).channel == "queue"


@pytest.mark.azurite
def test_azure_machine_cannot_read_another_machines_queue(azure_harness: Harness) -> None:
    """What Azurite enforces: a machine's SAS opens its own queue, not a neighbour's."""
    from azure.core.exceptions import HttpResponseError
    from azure.storage.queue import QueueClient

    mine, theirs = azure_harness.add_machine("vm2"), azure_harness.add_machine("vm3")
    theirs.agent_queue().send("secret orders")
    own_sas = str(mine.config.agent_queue["queue_sas"])
    endpoint = str(mine.config.agent_queue["queue_endpoint"])
    own = QueueClient(endpoint, mine.row_queue_name, credential=own_sas)
    assert list(own.receive_messages(max_messages=1)) == []  # allowed on its own queue
    neighbour = QueueClient(endpoint, theirs.row_queue_name, credential=own_sas)
    with pytest.raises(HttpResponseError) as refused:
        list(neighbour.receive_messages(max_messages=1))
    assert refused.value.status_code == 403
    assert theirs.agent_queue().approximate_count() == 1


@pytest.mark.moto
def test_sqs_machine_without_heartbeats_is_reached_through_ssm(
    tmp_path: Path, moto_server: MotoServer, ssm_standin: SsmStandIn
) -> None:
    """Fallback on AWS: SSM Run Command (the stand-in runs the script on the instance), then back to SQS."""
    import boto3

    bucket = f"ck-out-{tmp_path.name[-8:].lower().replace('_', '-')}"
    boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1", **KEYS).create_bucket(
        Bucket=bucket
    )
    options = {
        "endpoint_url": moto_server.endpoint, "region": "us-east-1", "machine_credentials": KEYS,
        "ssm_output_bucket": bucket, "ssm_poll_interval": 0.1,
    }  # fmt: skip
    harness = Harness.create(tmp_path, provider_kind="aws", secret=KEYS, options=options, heartbeat_timeout=5)
    try:
        import sys

        sim = ssm_standin.create_instance(
            f"i-{tmp_path.name[-10:]}", env={"CLOUDKEEP_PYTHON": sys.executable}
        )
        machine = harness.add_machine(sim.name, sim=sim)
        dispatcher = Dispatcher(harness.ctx)
        command_id = dispatcher.send(machine.row_id, "run_script", {"script": "echo via-ssm"})
        assert dispatcher.wait(command_id, timeout=90)["stdout"] == "via-ssm\n"
        assert harness.record(command_id).channel == "ssm"
        _start(harness, machine)
        command_id = dispatcher.send(machine.row_id, "run_script", {"script": "echo via-sqs"})
        assert dispatcher.wait(command_id, timeout=60)["stdout"] == "via-sqs\n"
        assert harness.record(command_id).channel == "queue"
    finally:
        harness.close()
