"""A rescan whose credential has no ssm_output_bucket fails as a whole, naming the option, instead
of marking each machine failed as if the machines were at fault (moto server + SSM agent stand-in)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.server.rescan_support import PYTHON_ENV, RescanWorld
from tests.support.peers import MotoServer
from tests.support.ssm_standin import SsmStandIn

from cloudkeep.server.rescan import start_rescan

pytestmark = [pytest.mark.slow, pytest.mark.moto]
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture
def world_without_bucket(
    tmp_path: Path, moto_server: MotoServer, ssm_standin: SsmStandIn, unique_name: str
) -> Iterator[RescanWorld]:
    options = {"endpoint_url": moto_server.endpoint, "region": "us-east-1", "machine_credentials": KEYS}
    world = RescanWorld.create(
        tmp_path / "home", ssm_standin.lab, provider="aws", secret=KEYS, options=options,
        location=unique_name, regions=["us-east-1"], include_tags={"cktest": unique_name},
    )  # fmt: skip
    world.only = set()
    yield world
    world.close()


def test_rescan_without_ssm_output_bucket_blames_the_configuration(
    world_without_bucket: RescanWorld, ssm_standin: SsmStandIn, unique_name: str
) -> None:
    world = world_without_bucket
    world.only.add(f"{unique_name}-web")  # type: ignore[union-attr]
    ssm_standin.create_instance(f"{unique_name}-web", tags={"cktest": unique_name}, env=PYTHON_ENV)

    session = world.session(start_rescan(world.ctx, world.group_id, wait=True))

    assert session.state == "failed"
    assert "ssm_output_bucket is not set" in session.reason and "no machine was contacted" in session.reason
    machine = world.machines()[f"{unique_name}-web"]
    assert machine.status == "discovered" and machine.status_reason == ""
