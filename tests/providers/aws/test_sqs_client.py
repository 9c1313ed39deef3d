"""The machine's light SQS client (``SqsJsonClient``): same calls, answers and errors as boto3's.

Against the moto server (SQS's JSON protocol) for the queue operations; a tiny local HTTP stand-in
(said so below) for what moto cannot be made to do: answer 503 / throttling and then recover.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import urllib3
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from cloudkeep.errors import AuthenticationError, CloudkeepError, NotFoundError, UnreachableError
from cloudkeep.providers.aws.provider import create_aws_provider
from cloudkeep.providers.aws.queues import SqsQueue, SqsQueueService
from cloudkeep.providers.aws.sqs_client import SqsJsonClient
from cloudkeep.providers.base import dead_letter_queue_name
from cloudkeep.providers.queues import open_queue_from_info
from tests.support.peers import MotoServer

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
pytestmark = pytest.mark.moto


@pytest.fixture
def sqs(moto_server: MotoServer) -> SqsQueueService:
    options = {"endpoint_url": moto_server.endpoint, "region": "us-east-1", "machine_credentials": KEYS}
    queues = create_aws_provider(KEYS, options).queues
    assert isinstance(queues, SqsQueueService)
    return queues


def test_machine_queue_round_trip_without_boto3(sqs: SqsQueueService, unique_name: str) -> None:
    server_side = sqs.ensure_queue(unique_name)
    queue = open_queue_from_info(sqs.connection_info(unique_name))
    assert isinstance(queue, SqsQueue) and isinstance(queue.client, SqsJsonClient)
    sent = queue.send("hello from the machine")
    [got] = server_side.receive(wait_seconds=5)  # boto3 on the server reads what the light client sent
    assert (got.body, got.message_id) == ("hello from the machine", sent)
    server_side.ack(got)

    server_side.send("for the machine")
    [message] = queue.receive(max_messages=10, visibility_timeout=30, wait_seconds=5)  # long poll
    assert message.body == "for the machine" and message.receive_count == 1 and message.sent_at is not None
    assert queue.receive(wait_seconds=0) == []  # hidden while in flight
    queue.extend_visibility(message, 60)
    assert queue.approximate_count() == 1
    queue.dead_letter(message, "bad signature")  # copies to the DLQ (URL looked up), deletes the original
    assert queue.approximate_count() == 0
    [dead] = sqs.get_queue(dead_letter_queue_name(unique_name)).receive(wait_seconds=5)
    assert dead.body == "for the machine"

    for n in range(12):
        server_side.send(f"batch {n}")
    taken = []
    while len(taken) < 12:
        got_some = queue.receive(max_messages=10, visibility_timeout=30, wait_seconds=5)
        assert got_some
        taken += got_some
    queue.ack_many(taken)  # DeleteMessageBatch, ten a call
    assert queue.approximate_count() == 0


def test_missing_queue_is_translated_as_with_boto3(sqs: SqsQueueService, unique_name: str) -> None:
    info = {**sqs.connection_info(sqs.ensure_queue(unique_name).name)}
    info["queue_url"] = info["queue_url"].rsplit("/", 1)[0] + "/no-such-queue-" + unique_name
    queue = open_queue_from_info(info)
    with pytest.raises(NotFoundError, match="sqs:SendMessage"):
        queue.send("x")
    with pytest.raises(ClientError) as raw:
        queue.client.get_queue_url(QueueName="no-such-queue-" + unique_name)  # type: ignore[attr-defined]
    assert raw.value.response["Error"]["Code"] == "AWS.SimpleQueueService.NonExistentQueue"
    assert raw.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_credentials_come_from_the_chain_and_are_asked_again_until_found(
    moto_server: MotoServer, sqs: SqsQueueService, unique_name: str
) -> None:
    url = sqs.connection_info(sqs.ensure_queue(unique_name).name)["queue_url"]
    answers: list[Credentials | None] = [None, Credentials("testing", "testing")]
    asked: list[int] = []

    def chain() -> Credentials | None:  # stands in for botocore's default chain (instance role …)
        asked.append(1)
        return answers.pop(0)

    client = SqsJsonClient(region="us-east-1", endpoint_url=moto_server.endpoint, credential_source=chain)
    queue = SqsQueue(client, unique_name, url)
    with pytest.raises(AuthenticationError, match="no AWS credentials"):
        queue.send("x")
    assert queue.send("y") and queue.send("z")
    assert len(asked) == 2  # found once, then kept (refreshable credentials renew themselves)


def test_unreachable_endpoint_is_unreachable_after_the_retries() -> None:
    slept: list[float] = []
    client = SqsJsonClient(
        region="us-east-1", endpoint_url="http://127.0.0.1:9", credentials=KEYS, max_attempts=3,
        sleep=slept.append,
    )  # fmt: skip
    with pytest.raises(UnreachableError, match="cannot reach AWS for sqs:SendMessage"):
        SqsQueue(client, "q", "http://127.0.0.1:9/123/q").send("x")
    assert len(slept) == 2 and all(0 <= s <= 20 for s in slept)


class _Flaky(BaseHTTPRequestHandler):
    """Stand-in for SQS having trouble: the scripted answers in ``server.answers``, in order."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append(dict(self.headers))  # type: ignore[attr-defined]
        status, headers, body = self.server.answers.pop(0)  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Flaky)
    server.answers = []  # type: ignore[attr-defined]
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _client(server: HTTPServer, slept: list[float]) -> SqsJsonClient:
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    return SqsJsonClient(region="eu-west-1", endpoint_url=endpoint, credentials=KEYS, sleep=slept.append)


def test_throttling_and_5xx_are_retried_and_requests_are_signed(flaky: HTTPServer) -> None:
    throttled = json.dumps({"__type": "com.amazonaws.sqs#ThrottlingException", "message": "slow down"})
    flaky.answers += [  # type: ignore[attr-defined]
        (503, {}, b"<html>busy</html>"),
        (400, {"x-amzn-query-error": "Throttling;Sender"}, throttled.encode()),
        (200, {}, b'{"MessageId": "m-1"}'),
    ]
    slept: list[float] = []
    assert _client(flaky, slept).send_message(QueueUrl="u", MessageBody="b") == {"MessageId": "m-1"}
    assert len(slept) == 2
    seen = flaky.seen  # type: ignore[attr-defined]
    assert [h["X-Amz-Target"] for h in seen] == ["AmazonSQS.SendMessage"] * 3
    assert all(h["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/") for h in seen)
    assert all("/eu-west-1/sqs/aws4_request" in h["Authorization"] for h in seen)


def test_refusals_are_not_retried_and_keep_their_code(flaky: HTTPServer) -> None:
    denied = {"__type": "com.amazon.coral.service#AccessDeniedException", "message": "not allowed"}
    flaky.answers += [(400, {"x-amzn-RequestId": "r-1"}, json.dumps(denied).encode())]  # type: ignore[attr-defined]
    slept: list[float] = []
    with pytest.raises(ClientError) as error:
        _client(flaky, slept).receive_message(QueueUrl="u")
    assert error.value.response["Error"] == {"Code": "AccessDeniedException", "Message": "not allowed"}
    assert error.value.response["ResponseMetadata"] == {"HTTPStatusCode": 400, "RequestId": "r-1"}
    assert slept == []


def test_expired_credentials_are_an_authentication_error(flaky: HTTPServer) -> None:
    expired = {"__type": "com.amazon.coral.service#ExpiredTokenException", "message": "token expired"}
    flaky.answers += [(400, {}, json.dumps(expired).encode())]  # type: ignore[attr-defined]
    with pytest.raises(AuthenticationError, match="AWS credentials expired"):
        SqsQueue(_client(flaky, []), "q", "http://x/q").receive(wait_seconds=0)


def test_proxies_from_the_environment_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Machines in private subnets reach SQS through HTTPS_PROXY, unless NO_PROXY names the host."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "sqs.eu-west-1.amazonaws.com")
    proxied = SqsJsonClient(
        region="us-east-1", endpoint_url="https://sqs.us-east-1.amazonaws.com", credentials=KEYS
    )
    direct = SqsJsonClient(
        region="eu-west-1", endpoint_url="https://sqs.eu-west-1.amazonaws.com", credentials=KEYS
    )
    assert isinstance(proxied._http, urllib3.ProxyManager)
    assert proxied._http.proxy is not None and proxied._http.proxy.host == "proxy.internal"
    assert not isinstance(direct._http, urllib3.ProxyManager)


def test_an_answer_that_is_not_sqs_json_is_refused(flaky: HTTPServer) -> None:
    flaky.answers += [(200, {}, b"<html>captive portal</html>")]  # type: ignore[attr-defined]
    queue = SqsQueue(_client(flaky, []), "q", "http://x/q")
    with pytest.raises(CloudkeepError, match="not an AWS response"):
        queue.send("x")


def test_opening_a_machine_queue_imports_no_boto3(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from cloudkeep.providers.queues import open_queue_from_info\n"
        "open_queue_from_info({'kind': 'aws', 'name': 'q', 'queue_url': 'https://sqs.eu-west-1.amazonaws.com/1/q',"
        " 'region': 'eu-west-1'})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'boto3', 's3transfer', 'pydantic'}))\n"
    )
    src = str(Path(__file__).resolve().parents[3] / "src")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": src}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
