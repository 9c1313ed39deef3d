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
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from botocore.exceptions import ClientError

from cloudkeep.errors import ConfigurationError, NotFoundError
from cloudkeep.providers.aws.errors import aws_errors, error_code
from cloudkeep.providers.aws.session import AwsSession
from cloudkeep.providers.base import CommandChannel, CommandResult, Machine, Platform

# GetCommandInvocation statuses that end a command (Pending/InProgress/Delayed/Cancelling do not)
TERMINAL = {"Success", "Failed", "Cancelled", "TimedOut"}
DOCUMENTS = {Platform.LINUX: "AWS-RunShellScript", Platform.WINDOWS: "AWS-RunPowerShellScript"}


class SsmCommandChannel(CommandChannel):
    """Options: ``output_bucket`` (required), ``output_prefix`` (default ``cloudkeep/ssm``)."""

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
        if not self.output_bucket:
            raise ConfigurationError(
                "SSM commands need an output bucket so that output is not truncated",
                hint="set the AWS provider option ssm_output_bucket",
            )
        ssm = self.session.client("ssm", machine.region)
        execution_timeout = max(30, int(timeout))
        with aws_errors("ssm:SendCommand", machine.id):
            try:
                sent = ssm.send_command(
                    InstanceIds=[machine.id],
                    DocumentName=DOCUMENTS[machine.platform],
                    Parameters={"commands": [script], "executionTimeout": [str(execution_timeout)]},
                    OutputS3BucketName=self.output_bucket,
                    OutputS3KeyPrefix=self.output_prefix,
                    TimeoutSeconds=max(30, int(timeout)),
                    # The target in the comment: SSM's own history then says which machine a
                    # command was for (moto's ListCommands fans a command out to every instance).
                    Comment=f"cloudkeep {machine.id}"[:100],
                )
            except ClientError as error:
                if error_code(error) == "InvalidInstanceId":
                    raise NotFoundError(
                        f"{machine.id} is not managed by SSM (no agent, no instance role, or not running)",
                        hint="attach an instance profile with AmazonSSMManagedInstanceCore; check the agent",
                    ) from error
                raise
        command_id = sent["Command"]["CommandId"]
        return self._wait(machine, command_id, timeout)

    def _wait(self, machine: Machine, command_id: str, timeout: float) -> CommandResult:
        ssm = self.session.client("ssm", machine.region)
        deadline = time.monotonic() + timeout
        terminal_since: float | None = None
        invocation: dict[str, Any] = {}
        while True:
            with aws_errors("ssm:GetCommandInvocation", command_id):
                try:
                    invocation = ssm.get_command_invocation(CommandId=command_id, InstanceId=machine.id)
                except ClientError as error:
                    if error_code(error) != "InvocationDoesNotExist":
                        raise
                    invocation = {"Status": "Pending"}  # not registered yet: SSM is eventually consistent
            output = self._s3_output(machine, command_id)
            status = invocation.get("Status", "Pending")
            if status in TERMINAL:
                terminal_since = terminal_since or time.monotonic()
                # An ``exitcode`` object comes from the SSM stand-in, which writes stdout last:
                # until stdout is there too, its output is still being written.
                complete = "stdout" in output or ("stderr" in output and "exitcode" not in output)
                if complete:
                    return self._result(command_id, invocation, output)
                if time.monotonic() - terminal_since > self.output_grace_seconds:
                    return self._result(command_id, invocation, output)
            if time.monotonic() >= deadline:
                self._cancel(machine, command_id)
                return CommandResult(
                    -1,
                    output.get("stdout", ""),
                    output.get("stderr", ""),
                    command_id=command_id,
                    timed_out=True,
                )
            time.sleep(self.poll_interval)

    def _s3_output(self, machine: Machine, command_id: str) -> dict[str, str]:
        s3 = self.session.client("s3")
        prefix = f"{self.output_prefix}/{command_id}/{machine.id}/"
        found: dict[str, list[str]] = {}
        with aws_errors("s3:ListBucket", f"s3://{self.output_bucket}/{prefix}"):
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.output_bucket, Prefix=prefix)
            keys = sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))
        for key in keys:  # one stdout/stderr per document step, in step order
            stream = key.rsplit("/", 1)[-1]
            if stream in ("stdout", "stderr", "exitcode"):
                with aws_errors("s3:GetObject", f"s3://{self.output_bucket}/{key}"):
                    body = s3.get_object(Bucket=self.output_bucket, Key=key)["Body"].read()
                found.setdefault(stream, []).append(body.decode(errors="replace"))
        return {stream: "".join(parts) for stream, parts in found.items()}

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

    def _cancel(self, machine: Machine, command_id: str) -> None:
        """Best effort: the command may have finished, or the service may not support it (moto)."""
        with contextlib.suppress(Exception):  # a failed cancel leaves only a stray command
            ssm = self.session.client("ssm", machine.region)
            ssm.cancel_command(CommandId=command_id, InstanceIds=[machine.id])
