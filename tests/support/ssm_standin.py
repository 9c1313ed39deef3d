"""Stand-in for the SSM agent on EC2 instances, for tests against moto (a test fake, clearly named).

moto's ``send_command`` records the command and reports ``Success`` at once but runs nothing and
writes no output. This separate process plays the agent on every instance of a ``Lab`` whose
simulated machines carry EC2 instance ids: it polls ``ListCommands(InstanceId=…)``, runs each new
command's script in the instance's ``SimulatedMachine`` and writes the output where real SSM
does — ``<OutputS3KeyPrefix>/<command-id>/<instance-id>/awsrunShellScript/0.awsrunshellscript/
{stdout,stderr}`` — plus an ``exitcode`` object (moto's status cannot carry it). ``exitcode`` and
``stderr`` are written before ``stdout``, so a reader that sees ``stdout`` sees everything.

Run: ``python -m tests.support.ssm_standin --endpoint URL --region R --lab DIR``.
"""

from __future__ import annotations

import argparse
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


def _addressed_to(command: dict[str, Any], instance_id: str) -> bool:
    """moto lists a command sent with ``InstanceIds`` (no ``Targets``) under EVERY instance of the
    region and puts them all in ``InstanceIds``; cloudkeep's channel names its target in the comment
    (``cloudkeep <instance-id>``), which is what decides here."""
    if instance_id not in command.get("InstanceIds", [instance_id]):
        return False
    words = str(command.get("Comment") or "").split()
    named = [w for w in words[1:] if w.startswith(("i-", "mi-"))] if words[:1] == ["cloudkeep"] else []
    return not named or instance_id in named


def serve(endpoint: str, region: str, lab_dir: Path, interval: float = 0.1) -> None:
    ssm, s3 = _clients(endpoint, region)
    lab = Lab(lab_dir)
    seen: set[tuple[str, str]] = set()
    while True:
        for machine in lab.list():
            instance_id = machine.id
            if not instance_id.startswith(("i-", "mi-")):
                continue
            listed = ssm.list_commands(InstanceId=instance_id).get("Commands", [])
            for command in sorted(listed, key=lambda c: c.get("RequestedDateTime") or 0):
                key = (command["CommandId"], instance_id)
                if key in seen or not _addressed_to(command, instance_id):
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
    def start(cls, endpoint: str, region: str, lab_dir: Path) -> SsmStandIn:
        lab = Lab(lab_dir)
        log_path = lab_dir / "ssm-standin.log"
        argv = [sys.executable, "-m", "tests.support.ssm_standin", "--endpoint", endpoint, "--region", region]
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
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.endpoint, args.region, args.lab)


if __name__ == "__main__":
    main()
