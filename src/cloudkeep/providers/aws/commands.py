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
ceil(N/50) writes per region and platform instead of N. A batch SSM refuses for an invalid
instance id is split in halves until the culprit stands alone.

Statuses are read per command, not per instance: one ListCommandInvocations (``Details``,
paginated) covers every instance of a batch, every ``STATUS_INTERVAL`` at most. Where listing
fails for another reason than throttling (moto answers 500; a policy without
``ssm:ListCommandInvocations``), that region falls back to per-instance GetCommandInvocation for
``LISTING_RETRY_SECONDS``. Every SSM call goes through the caller's pacer (SendCommand and
CancelCommand as writes, status reads as reads); S3 output is listed only for commands with an
instance in a terminal state. Each instance's output comes from its own prefix, so one
instance's failure is its own.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from cloudkeep.errors import CloudkeepError, ConfigurationError, NotFoundError, ThrottledError
from cloudkeep.providers.aws.errors import aws_errors, error_code
from cloudkeep.providers.aws.session import AwsSession
from cloudkeep.providers.base import CallPacer, CommandChannel, CommandResult, Machine, Platform, paced

log = logging.getLogger(__name__)

# GetCommandInvocation statuses that end a command (Pending/InProgress/Delayed/Cancelling do not)
TERMINAL = {"Success", "Failed", "Cancelled", "TimedOut"}
DOCUMENTS = {Platform.LINUX: "AWS-RunShellScript", Platform.WINDOWS: "AWS-RunPowerShellScript"}
BATCH_SIZE = 50  # SendCommand's InstanceIds limit (51 is refused)
COMMENT_LIMIT = 100
UNMANAGED_HINT = "attach an instance profile with AmazonSSMManagedInstanceCore; check the agent"
STATUS_INTERVAL = 2.0  # seconds between status reads of one command
LISTING_PAGE = 50  # ListCommandInvocations' largest page
LISTING_RETRY_SECONDS = 300.0  # after a listing failed: per-instance reads in that region until then


@dataclass
class _Invocation:
    """One instance's share of a sent command, while we wait for it."""

    machine: Machine
    command_id: str
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.output_bucket = output_bucket
        self.output_prefix = output_prefix.strip("/")
        self.poll_interval = poll_interval
        self.output_grace_seconds = output_grace_seconds
        self.clock = clock
        self._listing_off_until: dict[str, float] = {}  # region -> when to try listing again

    def run(
        self, machine: Machine, script: str, *, timeout: float = 600.0, pacer: CallPacer | None = None
    ) -> CommandResult:
        result = self.run_many([machine], script, timeout=timeout, pacer=pacer)[machine.id]
        if isinstance(result, CloudkeepError):
            raise result
        return result

    def run_many(
        self, machines: list[Machine], script: str, *, timeout: float = 600.0, pacer: CallPacer | None = None
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
                self._send(group[start : start + BATCH_SIZE], script, timeout, pacer, results, waiting)
        results.update(self._wait(waiting, timeout, pacer))
        return results

    def _send(
        self,
        batch: list[Machine],
        script: str,
        timeout: float,
        pacer: CallPacer | None,
        results: dict[str, CommandResult | CloudkeepError],
        waiting: list[_Invocation],
    ) -> None:
        """One SendCommand for ``batch``: one write token, retried by the pacer when throttled."""
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
            sent = paced(pacer, "write", first.region, send)
        except NotFoundError as error:
            if len(batch) == 1:
                results[first.id] = error
                return
            half = len(batch) // 2  # find the unmanaged instance; the others still get their command
            self._send(batch[:half], script, timeout, pacer, results, waiting)
            self._send(batch[half:], script, timeout, pacer, results, waiting)
            return
        except CloudkeepError as error:
            for machine in batch:
                results[machine.id] = error
            return
        command_id = sent["Command"]["CommandId"]
        waiting.extend(_Invocation(machine, command_id) for machine in batch)

    def _wait(
        self, waiting: list[_Invocation], timeout: float, pacer: CallPacer | None
    ) -> dict[str, CommandResult]:
        """Poll every sent invocation until it ends or ``timeout`` passes: a command's statuses at
        most every ``STATUS_INTERVAL`` (one listing for all its instances), its S3 output each
        round once an instance of it is in a terminal state."""
        results: dict[str, CommandResult] = {}
        deadline = self.clock() + timeout
        pending = list(waiting)
        next_status: dict[str, float] = {}  # command id -> when its statuses are read next
        interval = max(self.poll_interval, STATUS_INTERVAL)
        while pending:
            by_command: dict[str, list[_Invocation]] = {}
            for item in pending:
                by_command.setdefault(item.command_id, []).append(item)
            for command_id, items in by_command.items():
                if self.clock() >= next_status.get(command_id, 0.0):
                    self._read_statuses(command_id, items, pacer)
                    next_status[command_id] = self.clock() + interval
            ended = [cid for cid, items in by_command.items() if any(_terminal(i) for i in items)]
            listings = {cid: self._output_keys(cid) for cid in ended}
            now = self.clock()
            still: list[_Invocation] = []
            for item in pending:
                if not _terminal(item):
                    still.append(item)
                    continue
                keys = listings[item.command_id].get(item.machine.id, {})
                # An ``exitcode`` object comes from the SSM stand-in, which writes stdout last:
                # until stdout is there too, its output is still being written.
                complete = "stdout" in keys or ("stderr" in keys and "exitcode" not in keys)
                item.terminal_since = item.terminal_since or now
                if complete or now - item.terminal_since > self.output_grace_seconds:
                    if not complete and "StandardOutputContent" not in (item.invocation or {}):
                        item.invocation = self._invocation(item, pacer)  # the inline output, then
                    results[item.machine.id] = self._result(item, self._read_output(keys))
                    continue
                still.append(item)
            pending = still
            if pending and self.clock() >= deadline:
                self._give_up(pending, pacer, results)
                break
            if pending:
                time.sleep(self.poll_interval)
        return results

    def _give_up(
        self, pending: list[_Invocation], pacer: CallPacer | None, results: dict[str, CommandResult]
    ) -> None:
        """The deadline passed: what output there is, marked timed out; the commands cancelled."""
        listings = {cid: self._output_keys(cid) for cid in {i.command_id for i in pending}}
        for item in pending:
            output = self._read_output(listings[item.command_id].get(item.machine.id, {}))
            results[item.machine.id] = CommandResult(
                -1, output.get("stdout", ""), output.get("stderr", ""),
                command_id=item.command_id, timed_out=True,
            )  # fmt: skip
        self._cancel(pending, pacer)

    def _read_statuses(self, command_id: str, items: list[_Invocation], pacer: CallPacer | None) -> None:
        """Refresh ``items``' invocations: one listing for them all where it works, else one read each.
        Throttling beyond the pacer's retries leaves the statuses as they were until the next round."""
        try:
            listed = self._list_invocations(command_id, items[0].machine.region, pacer)
            for item in items:
                if listed is None:
                    item.invocation = self._invocation(item, pacer)
                elif item.machine.id in listed:  # absent: not registered yet (eventually consistent)
                    item.invocation = listed[item.machine.id]
        except ThrottledError as error:
            log.warning("SSM status reads of command %s throttled; trying again later: %s", command_id, error)

    def _list_invocations(
        self, command_id: str, region: str, pacer: CallPacer | None
    ) -> dict[str, dict[str, Any]] | None:
        """instance id -> its invocation (Status, ResponseCode) from ListCommandInvocations, one paced
        read a page; None where listing is unavailable in ``region`` (then read per instance)."""
        if self.clock() < self._listing_off_until.get(region, 0.0):
            return None
        # No botocore retries: the pacer backs off on throttling, and a failure falls back at once.
        ssm = self.session.client("ssm", region, retries=0)
        found: dict[str, dict[str, Any]] = {}
        token: str | None = None
        while True:

            def page(token: str | None = token) -> dict[str, Any]:
                with aws_errors("ssm:ListCommandInvocations", command_id):
                    extra = {"NextToken": token} if token else {}
                    answer: dict[str, Any] = ssm.list_command_invocations(
                        CommandId=command_id, Details=True, MaxResults=LISTING_PAGE, **extra
                    )
                    return answer

            try:
                answer = paced(pacer, "read", region, page)
            except ThrottledError:
                raise
            except NotFoundError:  # InvalidCommandId: not registered yet (SSM is eventually consistent)
                return found
            except CloudkeepError as error:
                self._listing_off_until[region] = self.clock() + LISTING_RETRY_SECONDS
                log.warning(
                    "ssm:ListCommandInvocations failed in %s (%s): reading each instance's status with "
                    "GetCommandInvocation for %.0f s", region, error, LISTING_RETRY_SECONDS,
                )  # fmt: skip
                return None
            for invocation in answer.get("CommandInvocations") or []:
                found[str(invocation.get("InstanceId"))] = _listed_invocation(invocation)
            token = answer.get("NextToken") or None
            if token is None:
                return found

    def _invocation(self, item: _Invocation, pacer: CallPacer | None) -> dict[str, Any]:
        ssm = self.session.client("ssm", item.machine.region)

        def read() -> dict[str, Any]:
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

        return paced(pacer, "read", item.machine.region, read)

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

    def _result(self, item: _Invocation, output: dict[str, str]) -> CommandResult:
        command_id, invocation = item.command_id, item.invocation or {}
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

    def _cancel(self, items: list[_Invocation], pacer: CallPacer | None) -> None:
        """Best effort: a command may have finished, or the service may not support it (moto)."""
        by_command: dict[str, list[_Invocation]] = {}
        for item in items:
            by_command.setdefault(item.command_id, []).append(item)
        for command_id, group in by_command.items():
            region = group[0].machine.region
            cancel = partial(
                self.session.client("ssm", region).cancel_command,
                CommandId=command_id, InstanceIds=[i.machine.id for i in group],
            )  # fmt: skip
            with contextlib.suppress(Exception):  # a failed cancel leaves only a stray command
                paced(pacer, "write", region, cancel)


def _terminal(item: _Invocation) -> bool:
    return (item.invocation or {}).get("Status", "Pending") in TERMINAL


def _listed_invocation(listed: dict[str, Any]) -> dict[str, Any]:
    """A ListCommandInvocations entry in GetCommandInvocation's shape: its status, and the first
    failing step's response code (the only one, for our one-step documents)."""
    codes = [int(p["ResponseCode"]) for p in listed.get("CommandPlugins") or [] if "ResponseCode" in p]
    code = next((c for c in codes if c != 0), codes[0] if codes else -1)
    return {"Status": listed.get("Status", "Pending"), "ResponseCode": code}


def _comment(ids: list[str]) -> str:
    """Names the targets while they fit in SSM's 100 characters (its history then says which
    machines a command was for); a larger batch gets a unique name to find it by."""
    named = "cloudkeep " + " ".join(ids)
    if len(named) <= COMMENT_LIMIT:
        return named
    return f"cloudkeep batch {uuid.uuid4().hex[:12]} of {len(ids)} instances"
