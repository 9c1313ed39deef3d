"""SSM Run Command: AWS-RunShellScript on Linux, AWS-RunPowerShellScript on Windows.

Output is read from S3 (``OutputS3BucketName``/``OutputS3KeyPrefix``), never from
GetCommandInvocation's inline fields, which SSM truncates at 24,000 characters of stdout and
8,000 of stderr. SSM writes ``<prefix>/<command-id>/<instance-id>/<plugin>/<step>/stdout`` and
``…/stderr``; we list everything under ``<prefix>/<command-id>/<instance-id>/``.

Completion is decided by the invocation status *and* the presence of output in S3: SSM uploads
the output before it reports a terminal status, so once the status is terminal and output is
there, we have all of it. An ``exitcode`` object next to stdout, when present, gives the exit
code; the SSM agent stand-in used with moto writes one (moto reports ``Success`` at once without
running anything). If no output appears within a grace period after a terminal status (no
output bucket permission on the instance role, or an empty script), the inline output is used.

One SendCommand addresses up to 50 instances (``run_many``): a rescan of N machines costs
ceil(N/50) writes per region and platform instead of N. Each instance's result is then read with
GetCommandInvocation and from its own output prefix, so one instance's failure is its own. A
batch SSM refuses for an invalid instance id is split in halves until the culprit stands alone.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from cloudkeep.errors import CloudkeepError, ConfigurationError, NotFoundError
from cloudkeep.providers.aws.errors import aws_errors, error_code
from cloudkeep.providers.aws.session import AwsSession
from cloudkeep.providers.base import CommandChannel, CommandResult, Machine, Pace, Platform

# GetCommandInvocation statuses that end a command (Pending/InProgress/Delayed/Cancelling do not)
TERMINAL = {"Success", "Failed", "Cancelled", "TimedOut"}
DOCUMENTS = {Platform.LINUX: "AWS-RunShellScript", Platform.WINDOWS: "AWS-RunPowerShellScript"}
BATCH_SIZE = 50  # SendCommand's InstanceIds limit (51 is refused)
COMMENT_LIMIT = 100
UNMANAGED_HINT = "attach an instance profile with AmazonSSMManagedInstanceCore; check the agent"
STATUS_INTERVAL = 2.0  # seconds between GetCommandInvocation calls for an instance with no output yet


@dataclass
class _Invocation:
    """One instance's share of a sent command, while we wait for it."""

    machine: Machine
    command_id: str
    next_status_check: float = 0.0
    terminal_since: float | None = None
    invocation: dict[str, Any] | None = None


class SsmCommandChannel(CommandChannel):
    """Options: ``output_bucket`` (required), ``output_prefix`` (default ``cloudkeep/ssm``)."""

    batch_size = BATCH_SIZE

    def __init__(
        self,
        session: AwsSession,
        output_bucket: str | None,
        output_prefix: str = "cloudkeep/ssm",
        *,
        poll_interval: float = 0.25,
        output_grace_seconds: float = 15.0,
    ) -> None:
        self.session = session
        self.output_bucket = output_bucket
        self.output_prefix = output_prefix.strip("/")
        self.poll_interval = poll_interval
        self.output_grace_seconds = output_grace_seconds

    def run(self, machine: Machine, script: str, *, timeout: float = 600.0) -> CommandResult:
        result = self.run_many([machine], script, timeout=timeout)[machine.id]
        if isinstance(result, CloudkeepError):
            raise result
        return result

    def run_many(
        self, machines: list[Machine], script: str, *, timeout: float = 600.0, pace: Pace | None = None
    ) -> dict[str, CommandResult | CloudkeepError]:
        if not self.output_bucket:
            raise ConfigurationError(
                "SSM commands need an output bucket so that output is not truncated",
                hint="set the AWS provider option ssm_output_bucket",
            )
        results: dict[str, CommandResult | CloudkeepError] = {}
        waiting: list[_Invocation] = []
        groups: dict[tuple[str, Platform], list[Machine]] = {}
        for machine in {m.id: m for m in machines}.values():
            # One document per call, and SSM refuses a whole call that mixes platforms.
            groups.setdefault((machine.region, machine.platform), []).append(machine)
        for group in groups.values():
            for start in range(0, len(group), BATCH_SIZE):
                self._send(group[start : start + BATCH_SIZE], script, timeout, pace, results, waiting)
        results.update(self._wait(waiting, timeout))
        return results

    def _send(
        self,
        batch: list[Machine],
        script: str,
        timeout: float,
        pace: Pace | None,
        results: dict[str, CommandResult | CloudkeepError],
        waiting: list[_Invocation],
    ) -> None:
        """One SendCommand for ``batch`` (paced, retried by the pacer when throttled)."""
        first = batch[0]
        ids = [m.id for m in batch]
        ssm = self.session.client("ssm", first.region)
        execution_timeout = max(30, int(timeout))

        def send() -> dict[str, Any]:
            with aws_errors("ssm:SendCommand", ids[0] if len(ids) == 1 else f"{len(ids)} instances"):
                try:
                    sent: dict[str, Any] = ssm.send_command(
                        InstanceIds=ids,
                        DocumentName=DOCUMENTS[first.platform],
                        Parameters={"commands": [script], "executionTimeout": [str(execution_timeout)]},
                        OutputS3BucketName=self.output_bucket,
                        OutputS3KeyPrefix=self.output_prefix,
                        TimeoutSeconds=execution_timeout,
                        Comment=_comment(ids),
                    )
                    return sent
                except ClientError as error:
                    if error_code(error) == "InvalidInstanceId":
                        raise NotFoundError(
                            f"{ids[0] if len(ids) == 1 else 'an instance of the batch'} is not managed by "
                            "SSM (no agent, no instance role, or not running)",
                            hint=UNMANAGED_HINT,
                        ) from error
                    raise

        try:
            sent = send() if pace is None else pace(first.region, send)
        except NotFoundError as error:
            if len(batch) == 1:
                results[first.id] = error
                return
            half = len(batch) // 2  # find the unmanaged instance; the others still get their command
            self._send(batch[:half], script, timeout, pace, results, waiting)
            self._send(batch[half:], script, timeout, pace, results, waiting)
            return
        except CloudkeepError as error:
            for machine in batch:
                results[machine.id] = error
            return
        command_id = sent["Command"]["CommandId"]
        waiting.extend(_Invocation(machine, command_id) for machine in batch)

    def _wait(self, waiting: list[_Invocation], timeout: float) -> dict[str, CommandResult]:
        """Poll every sent invocation until it ends or ``timeout`` passes: one output listing per
        command a round, GetCommandInvocation per instance when its output is there (or now and
        then while it is not)."""
        results: dict[str, CommandResult] = {}
        deadline = time.monotonic() + timeout
        pending = list(waiting)
        while pending:
            listings = {cid: self._output_keys(cid) for cid in {w.command_id for w in pending}}
            still: list[_Invocation] = []
            for item in pending:
                keys = listings[item.command_id].get(item.machine.id, {})
                # An ``exitcode`` object comes from the SSM stand-in, which writes stdout last:
                # until stdout is there too, its output is still being written.
                complete = "stdout" in keys or ("stderr" in keys and "exitcode" not in keys)
                now = time.monotonic()
                if complete or now >= item.next_status_check:
                    item.invocation = self._invocation(item)
                    item.next_status_check = now + max(self.poll_interval, STATUS_INTERVAL)
                status = (item.invocation or {}).get("Status", "Pending")
                if status in TERMINAL:
                    item.terminal_since = item.terminal_since or now
                    if complete or now - item.terminal_since > self.output_grace_seconds:
                        output = self._read_output(keys)
                        invocation = item.invocation or {}
                        results[item.machine.id] = self._result(item.command_id, invocation, output)
                        continue
                still.append(item)
            pending = still
            if pending and time.monotonic() >= deadline:
                for item in pending:
                    output = self._read_output(listings[item.command_id].get(item.machine.id, {}))
                    results[item.machine.id] = CommandResult(
                        -1, output.get("stdout", ""), output.get("stderr", ""),
                        command_id=item.command_id, timed_out=True,
                    )  # fmt: skip
                self._cancel(pending)
                break
            if pending:
                time.sleep(self.poll_interval)
        return results

    def _invocation(self, item: _Invocation) -> dict[str, Any]:
        ssm = self.session.client("ssm", item.machine.region)
        with aws_errors("ssm:GetCommandInvocation", f"{item.command_id} on {item.machine.id}"):
            try:
                found: dict[str, Any] = ssm.get_command_invocation(
                    CommandId=item.command_id, InstanceId=item.machine.id
                )
                return found
            except ClientError as error:
                if error_code(error) != "InvocationDoesNotExist":
                    raise
                return {"Status": "Pending"}  # not registered yet: SSM is eventually consistent

    def _output_keys(self, command_id: str) -> dict[str, dict[str, list[str]]]:
        """instance id -> stream (stdout/stderr/exitcode) -> its keys, one per document step in order."""
        s3 = self.session.client("s3")
        prefix = f"{self.output_prefix}/{command_id}/"
        found: dict[str, dict[str, list[str]]] = {}
        with aws_errors("s3:ListBucket", f"s3://{self.output_bucket}/{prefix}"):
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.output_bucket, Prefix=prefix)
            keys = sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))
        for key in keys:
            instance_id, _, rest = key[len(prefix) :].partition("/")
            stream = rest.rsplit("/", 1)[-1]
            if rest and stream in ("stdout", "stderr", "exitcode"):
                found.setdefault(instance_id, {}).setdefault(stream, []).append(key)
        return found

    def _read_output(self, keys: dict[str, list[str]]) -> dict[str, str]:
        s3 = self.session.client("s3")
        output: dict[str, str] = {}
        for stream, stream_keys in keys.items():
            parts = []
            for key in stream_keys:
                with aws_errors("s3:GetObject", f"s3://{self.output_bucket}/{key}"):
                    body = s3.get_object(Bucket=self.output_bucket, Key=key)["Body"].read()
                parts.append(body.decode(errors="replace"))
            output[stream] = "".join(parts)
        return output

    def _result(self, command_id: str, invocation: dict[str, Any], output: dict[str, str]) -> CommandResult:
        if "exitcode" in output:
            exit_code = int(output["exitcode"].strip() or 0)
        else:
            exit_code = int(invocation.get("ResponseCode", -1))
        status = invocation.get("Status")
        stdout = output.get("stdout", invocation.get("StandardOutputContent", ""))
        stderr = output.get("stderr", invocation.get("StandardErrorContent", ""))
        if "exitcode" not in output and status != "Success" and exit_code == 0:
            exit_code = 1  # Cancelled / Undeliverable report ResponseCode 0 or -1
        return CommandResult(exit_code, stdout, stderr, command_id=command_id, timed_out=status == "TimedOut")

    def _cancel(self, items: list[_Invocation]) -> None:
        """Best effort: a command may have finished, or the service may not support it (moto)."""
        by_command: dict[str, list[_Invocation]] = {}
        for item in items:
            by_command.setdefault(item.command_id, []).append(item)
        for command_id, group in by_command.items():
            with contextlib.suppress(Exception):  # a failed cancel leaves only a stray command
                ssm = self.session.client("ssm", group[0].machine.region)
                ssm.cancel_command(CommandId=command_id, InstanceIds=[i.machine.id for i in group])


def _comment(ids: list[str]) -> str:
    """Names the targets while they fit in SSM's 100 characters (its history then says which
    machines a command was for); a larger batch gets a unique name to find it by."""
    named = "cloudkeep " + " ".join(ids)
    if len(named) <= COMMENT_LIMIT:
        return named
    return f"cloudkeep batch {uuid.uuid4().hex[:12]} of {len(ids)} instances"
