"""Stand-in for SSM's result reads in front of moto (a test fake, clearly named).

moto answers 500 to ``ListCommandInvocations`` and reports ``Success`` for every invocation the
moment a command is sent. This loopback proxy sits between cloudkeep and moto: it forwards every
request, remembers each SendCommand's instances and output location, and answers the two status
reads itself the way real SSM does — an invocation is ``InProgress`` until its output is in S3
(the SSM agent stand-in writes ``exitcode``, ``stderr``, then ``stdout``), then ``Success`` or
``Failed`` with the script's exit code as the plugin's response code:

* ``ListCommandInvocations(CommandId, Details, MaxResults, NextToken)``, in pages of at most
  ``page_size`` (real SSM: 50);
* ``GetCommandInvocation(CommandId, InstanceId)``.

It counts requests per operation; ``throttle_next(n)`` answers the next ``n`` status reads with
``ThrottlingException`` as SSM does when an account exceeds its rate, and ``unknown_next(n)`` the
next ``n`` listings with ``InvalidCommandId``, as SSM may right after SendCommand (its reads are
eventually consistent).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

import boto3

from tests.support.proxy import LoopbackServer, StandInHandler, ask_upstream, relay

STATUS_READS = ("ListCommandInvocations", "GetCommandInvocation")


@dataclass(frozen=True)
class SentCommand:
    instance_ids: tuple[str, ...]
    bucket: str
    prefix: str  # OutputS3KeyPrefix/command-id


class SsmReadsStandIn:
    def __init__(self, upstream: str, region: str, *, page_size: int = 50) -> None:
        self.upstream = urlsplit(upstream)
        self.page_size = page_size
        self.requests: Counter[str] = Counter()  # operation -> requests seen (throttled ones too)
        self.commands: dict[str, SentCommand] = {}
        self._throttle = 0
        self._unknown = 0
        self._lock = threading.Lock()
        self._s3 = boto3.client(
            "s3", endpoint_url=upstream, region_name=region,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip
        self._server = LoopbackServer(self._handler())

    @property
    def endpoint(self) -> str:
        return self._server.url

    def throttle_next(self, count: int) -> None:
        with self._lock:
            self._throttle += count

    def unknown_next(self, count: int) -> None:
        with self._lock:
            self._unknown += count

    def close(self) -> None:
        self._server.close()

    # --- SSM's view of an invocation -------------------------------------------------------------

    def invocation(self, command_id: str, instance_id: str, *, details: bool) -> dict[str, Any]:
        """``Status`` (and the plugin's ``ResponseCode``) as real SSM reports it: terminal only once
        the output is uploaded."""
        sent = self.commands[command_id]
        base = f"{sent.prefix}/{instance_id}/"
        listed = self._s3.list_objects_v2(Bucket=sent.bucket, Prefix=base).get("Contents", [])
        streams = {obj["Key"].rsplit("/", 1)[-1]: obj["Key"] for obj in listed}
        code = -1
        status = "InProgress"
        if "stdout" in streams and "exitcode" in streams:
            body = self._s3.get_object(Bucket=sent.bucket, Key=streams["exitcode"])["Body"].read()
            code = int(body.decode().strip() or 0)
            status = "Success" if code == 0 else "Failed"
        found: dict[str, Any] = {"CommandId": command_id, "InstanceId": instance_id, "Status": status}
        if details:
            found["CommandPlugins"] = [{"Name": "aws:runShellScript", "Status": status, "ResponseCode": code}]
        else:
            found.update(ResponseCode=code, StandardOutputContent="", StandardErrorContent="")
        return found

    def _list(self, request: dict[str, Any]) -> dict[str, Any]:
        command_id = request["CommandId"]
        size = min(int(request.get("MaxResults") or 50), self.page_size)
        start = int(request.get("NextToken") or 0)
        ids = self.commands[command_id].instance_ids
        page = [
            self.invocation(command_id, i, details=bool(request.get("Details")))
            for i in ids[start : start + size]
        ]
        answer: dict[str, Any] = {"CommandInvocations": page}
        if start + size < len(ids):
            answer["NextToken"] = str(start + size)
        return answer

    # --- HTTP ---------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(StandInHandler):
            def _answer(self, status: int, body: dict[str, Any]) -> None:
                self.answer(status, json.dumps(body).encode(), {"Content-Type": "application/x-amz-json-1.1"})

            def _handle(self) -> None:
                body = self.read_body()
                target = str(self.headers.get("X-Amz-Target") or "")
                operation = target.removeprefix("AmazonSSM.") if target.startswith("AmazonSSM.") else ""
                with standin._lock:
                    if operation:
                        standin.requests[operation] += 1
                    throttled = operation in STATUS_READS and standin._throttle > 0
                    standin._throttle -= throttled
                    unknown = operation == "ListCommandInvocations" and standin._unknown > 0
                    standin._unknown -= unknown
                if throttled:
                    return self._answer(400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
                if unknown:
                    return self._answer(400, {"__type": "InvalidCommandId", "message": "not found"})
                request = json.loads(body or b"{}") if operation else {}
                if operation == "ListCommandInvocations":
                    return self._answer(200, standin._list(request))
                if operation == "GetCommandInvocation":
                    invocation = standin.invocation(
                        request["CommandId"], request["InstanceId"], details=False
                    )
                    return self._answer(200, invocation)
                status, answer_headers, data = ask_upstream(
                    standin.upstream, self.command, self.path, body, self.forward_headers()
                )
                if operation == "SendCommand" and status == 200:
                    command = json.loads(data)["Command"]
                    prefix = "/".join(p for p in (str(request.get("OutputS3KeyPrefix", "")).strip("/"),
                                                  command["CommandId"]) if p)  # fmt: skip
                    standin.commands[command["CommandId"]] = SentCommand(
                        tuple(request["InstanceIds"]), str(request.get("OutputS3BucketName", "")), prefix
                    )
                relay(self, status, answer_headers, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
