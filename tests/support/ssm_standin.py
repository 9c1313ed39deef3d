"""Stand-in for the SSM agent on EC2 instances, for tests against moto (a test fake, clearly named).

moto's ``send_command`` records the command and reports ``Success`` at once but runs nothing and
writes no output. This separate process plays the agent on every instance of a ``Lab`` whose
simulated machines carry EC2 instance ids: it polls ``ListCommands(InstanceId=…)``, runs each new
command's script in the instance's ``SimulatedMachine`` and writes the output where real SSM
does — ``<OutputS3KeyPrefix>/<command-id>/<instance-id>/awsrunShellScript/0.awsrunshellscript/
{stdout,stderr}`` — plus an ``exitcode`` object (moto's status cannot carry it). ``exitcode`` and
``stderr`` are written before ``stdout``, so a reader that sees ``stdout`` sees everything.

Which instances a command is for: moto lists a command sent with ``InstanceIds`` under EVERY
instance of the region and reports them all as its ``InstanceIds`` (it adds the instances its empty
``Targets`` match), so the requested list is lost in moto's state. The stand-in therefore reads the
real ``InstanceIds`` of each SendCommand from moto's request recording (``MotoServer.start(record=
True)``, passed as ``--recording``), matched by the command's comment, which cloudkeep makes unique
per batch; that is how it runs a batch of up to 50 instances on exactly those. Without a recording
it falls back to the comment, which names the targets while they fit in 100 characters (and a
larger batch then runs on every instance the command is listed under).

Run: ``python -m tests.support.ssm_standin --endpoint URL --region R --lab DIR``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from cloudkeep.providers.local.machine import Lab, SimulatedMachine
from tests.support.peers import PROJECT_ROOT, PeerError

PLUGIN_DIRS = {
    "AWS-RunShellScript": ("shell", "awsrunShellScript/0.awsrunshellscript"),
    "AWS-RunPowerShellScript": ("powershell", "awsrunPowerShellScript/0.awsrunpowershellscript"),
}


def _clients(endpoint: str, region: str) -> tuple[Any, Any]:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region
    )
    return session.client("ssm", endpoint_url=endpoint), session.client("s3", endpoint_url=endpoint)


def _already_done(s3: Any, bucket: str, prefix: str) -> bool:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    return bool(listed.get("KeyCount"))


def execute(command: dict[str, Any], machine: SimulatedMachine, instance_id: str, s3: Any) -> None:
    """Run one command on one machine and publish its output the way the SSM agent does."""
    shell, plugin_dir = PLUGIN_DIRS.get(command["DocumentName"], ("shell", "unsupported/0.unsupported"))
    bucket = command.get("OutputS3BucketName")
    prefix = "/".join(p for p in (command.get("OutputS3KeyPrefix", "").strip("/"), command["CommandId"]) if p)
    base = f"{prefix}/{instance_id}/{plugin_dir}"
    if bucket and _already_done(s3, bucket, f"{prefix}/{instance_id}/"):
        return
    script = "\n".join(command.get("Parameters", {}).get("commands", []))
    timeout = float((command.get("Parameters", {}).get("executionTimeout") or ["3600"])[0])
    outcome = machine.run(script, shell=shell, timeout=timeout)  # type: ignore[arg-type]
    if not bucket:
        return
    s3.put_object(Bucket=bucket, Key=f"{base}/exitcode", Body=str(outcome.exit_code).encode())
    s3.put_object(Bucket=bucket, Key=f"{base}/stderr", Body=outcome.stderr.encode())
    s3.put_object(Bucket=bucket, Key=f"{base}/stdout", Body=outcome.stdout.encode())


class SentCommands:
    """The real ``InstanceIds`` of each SendCommand, by comment, read from moto's request recording."""

    def __init__(self, recording: Path | None) -> None:
        self.recording = recording
        self.offset = 0
        self.by_comment: dict[str, list[str]] = {}

    def targets(self, comment: str) -> list[str] | None:
        if self.recording is not None and comment not in self.by_comment:
            self._read_new()  # a command is recorded before moto creates it: it is there by now
        return self.by_comment.get(comment)

    def _read_new(self) -> None:
        assert self.recording is not None
        if not self.recording.exists():
            return
        with self.recording.open("rb") as file:
            file.seek(self.offset)
            data = file.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            entry = json.loads(line)
            headers = {k.lower(): v for k, v in (entry.get("headers") or {}).items()}
            if headers.get("x-amz-target") != "AmazonSSM.SendCommand":
                continue
            body = entry.get("body") or "{}"
            request = json.loads(base64.b64decode(body) if entry.get("body_encoded") else body)
            if request.get("InstanceIds"):
                self.by_comment[str(request.get("Comment") or "")] = list(request["InstanceIds"])


def _addressed_to(command: dict[str, Any], instance_id: str, sent: SentCommands) -> bool:
    """The recorded request decides (see the module's docstring); else the comment
    (``cloudkeep <instance-id> …``) when it names instances."""
    if instance_id not in command.get("InstanceIds", [instance_id]):
        return False
    comment = str(command.get("Comment") or "")
    targets = sent.targets(comment)
    if targets is not None:
        return instance_id in targets
    words = comment.split()
    named = [w for w in words[1:] if w.startswith(("i-", "mi-"))] if words[:1] == ["cloudkeep"] else []
    return not named or instance_id in named


def serve(
    endpoint: str, region: str, lab_dir: Path, interval: float = 0.1, recording: Path | None = None
) -> None:
    ssm, s3 = _clients(endpoint, region)
    lab = Lab(lab_dir)
    sent = SentCommands(recording)
    seen: set[tuple[str, str]] = set()
    while True:
        for machine in lab.list():
            instance_id = machine.id
            if not instance_id.startswith(("i-", "mi-")):
                continue
            listed = ssm.list_commands(InstanceId=instance_id).get("Commands", [])
            for command in sorted(listed, key=lambda c: c.get("RequestedDateTime") or 0):
                key = (command["CommandId"], instance_id)
                if key in seen or not _addressed_to(command, instance_id, sent):
                    continue  # moto can fan a command out to instances it was not sent to
                seen.add(key)
                threading.Thread(
                    target=execute, args=(command, machine, instance_id, s3), daemon=True
                ).start()
        time.sleep(interval)


@dataclass
class SsmStandIn:
    """Handle on the running stand-in process; ``lab`` holds the instances' simulated machines."""

    endpoint: str
    region: str
    lab: Lab
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, endpoint: str, region: str, lab_dir: Path, *, recording: Path | None = None) -> SsmStandIn:
        """``recording``: moto's request recording (``MotoServer.recording``), to honour batches."""
        lab = Lab(lab_dir)
        log_path = lab_dir / "ssm-standin.log"
        argv = [sys.executable, "-m", "tests.support.ssm_standin", "--endpoint", endpoint, "--region", region]
        if recording is not None:
            argv += ["--recording", str(recording)]
        env = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*argv, "--lab", str(lab_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
                env=env,
            )
        return cls(endpoint, region, lab, process, log_path)

    def create_instance(
        self, name: str, *, image_id: str = "ami-1e749f67", tags: dict[str, str] | None = None, **machine: Any
    ) -> SimulatedMachine:
        """Launch an EC2 instance on moto and give it a simulated machine the stand-in serves."""
        ec2 = boto3.client(
            "ec2", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip
        all_tags = {"Name": name, **(tags or {})}
        reservation = ec2.run_instances(
            ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro",
            TagSpecifications=[{"ResourceType": "instance",
                                "Tags": [{"Key": k, "Value": v} for k, v in all_tags.items()]}],
        )  # fmt: skip
        instance = reservation["Instances"][0]
        platform = "windows" if instance.get("Platform") == "windows" else "linux"
        return self.lab.create_machine(
            name,
            machine_id=instance["InstanceId"],
            platform=platform,
            tags=all_tags,
            region=self.region,
            **machine,
        )

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def assert_alive(self) -> None:
        if self.process.poll() is not None:
            raise PeerError(f"SSM stand-in exited:\n{self.log_tail()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--lab", required=True, type=Path)
    parser.add_argument("--recording", type=Path, help="moto's request recording (MOTO_RECORDER_FILEPATH)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.endpoint, args.region, args.lab, recording=args.recording)


if __name__ == "__main__":
    main()
