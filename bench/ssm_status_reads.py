"""SSM calls to run one script on N instances: status reads per command (listing) vs per instance.

Runs ``SsmCommandChannel.run_many`` twice on N simulated EC2 instances on moto, with the SSM
agent stand-in executing the scripts (tests/support/ssm_standin.py):

* ``listing``: through the SSM reads stand-in (tests/support/ssm_reads_standin.py), which answers
  ListCommandInvocations and GetCommandInvocation as real SSM does (InProgress until the output
  is in S3, pages of 50);
* ``per-instance``: on moto directly, which answers 500 to ListCommandInvocations, so the
  channel reads each instance with GetCommandInvocation (the fallback, and what every read was
  before).

Every call goes through the server's pacer with AWS's buckets on a clock that moves only when
the pacer sleeps: ``paced wait`` is how long the budget alone would have held the calls back.

    .venv/bin/python bench/ssm_status_reads.py --instances 100
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import boto3

from cloudkeep.providers.aws.facts import FACTS
from cloudkeep.providers.aws.provider import create_aws_provider
from cloudkeep.providers.base import Machine, Platform

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.pacing import CountingPacer, FakeClock
from tests.support.peers import MotoServer
from tests.support.ssm_reads_standin import SsmReadsStandIn
from tests.support.ssm_standin import SsmStandIn

REGION = "us-east-1"
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
SCRIPT = 'sleep 3; echo "$CLOUDKEEP_MACHINE_ID"'  # long enough for the first status read to see it run


def _count(moto: MotoServer, operation: str) -> int:
    assert moto.recording is not None
    text = moto.recording.read_text() if moto.recording.exists() else ""
    return text.count(f'"AmazonSSM.{operation}"')


def measure(endpoint: str, moto: MotoServer, machines: list[Machine]) -> dict[str, float]:
    options = {"endpoint_url": endpoint, "region": REGION, "ssm_output_bucket": "ck-bench-ssm"}
    provider = create_aws_provider(KEYS, options)
    clock = FakeClock()
    pacer = CountingPacer(FACTS, clock)
    before = {op: _count(moto, op) for op in ("SendCommand", "GetCommandInvocation")}
    started = time.monotonic()
    try:
        results = provider.commands.run_many(machines, SCRIPT, timeout=120, pacer=pacer)
    finally:
        provider.close()
    ok = sum(1 for r in results.values() if not isinstance(r, Exception) and r.ok)
    return {
        "ok": ok,
        "writes": pacer.count("write"),
        "reads": pacer.count("read"),
        "moto GetCommandInvocation": _count(moto, "GetCommandInvocation") - before["GetCommandInvocation"],
        "paced wait s": clock.now - 1000.0,
        "wall s": time.monotonic() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ck-ssm-reads-") as folder:
        moto = MotoServer.start(record=True)
        agent = SsmStandIn.start(moto.endpoint, REGION, Path(folder), recording=moto.recording)
        reads = SsmReadsStandIn(moto.endpoint, REGION)
        try:
            boto3.client(
                "s3",
                endpoint_url=moto.endpoint,
                region_name=REGION,
                aws_access_key_id=KEYS["aws_access_key_id"],
                aws_secret_access_key=KEYS["aws_secret_access_key"],
            ).create_bucket(Bucket="ck-bench-ssm")
            served = [agent.create_instance(f"b{n:04d}") for n in range(args.instances)]
            machines = [
                Machine(id=s.id, name=s.name, platform=Platform.LINUX, state="running", region=REGION)
                for s in served
            ]
            rows = {
                "listing": measure(reads.endpoint, moto, machines),
                "per-instance": measure(moto.endpoint, moto, machines),
            }
            rows["listing"]["ListCommandInvocations"] = reads.requests["ListCommandInvocations"]
        finally:
            reads.close()
            agent.stop()
            moto.stop()
    keys = [
        "ok",
        "writes",
        "reads",
        "ListCommandInvocations",
        "moto GetCommandInvocation",
        "paced wait s",
        "wall s",
    ]
    print(f"| {args.instances} instances | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for mode, row in rows.items():
        cells = [f"{row.get(k, 0):.1f}" if k.endswith(" s") else str(int(row.get(k, 0))) for k in keys]
        print(f"| {mode} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
