"""EC2 inventory against the moto server: tags, platform, boot mode, pagination, regions."""

from __future__ import annotations

import boto3
import pytest

from cloudkeep.errors import ConfigurationError, NotFoundError
from cloudkeep.providers import InventoryScope, get_provider
from cloudkeep.providers.aws.provider import AwsProvider
from cloudkeep.providers.base import Platform
from tests.providers.aws.conftest import KEYS
from tests.support.peers import MotoServer

LINUX_AMI = "ami-1e749f67"
WINDOWS_AMI = "ami-12c6146b"


def _launch(endpoint: str, region: str, image: str, tags: dict[str, str], count: int = 1) -> list[str]:
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=region, **KEYS)
    tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
    reservation = ec2.run_instances(
        ImageId=image, MinCount=count, MaxCount=count,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list}],
    )  # fmt: skip
    return [i["InstanceId"] for i in reservation["Instances"]]


def test_lists_tagged_linux_and_windows_instances(
    aws: AwsProvider, moto_server: MotoServer, unique_name: str
) -> None:
    [linux] = _launch(moto_server.endpoint, "us-east-1", LINUX_AMI, {"Name": "web", "Group": unique_name})
    [windows] = _launch(moto_server.endpoint, "us-east-1", WINDOWS_AMI, {"Name": "dc", "group": unique_name})
    _launch(moto_server.endpoint, "us-east-1", LINUX_AMI, {"Name": "other", "Group": "else"})
    found = {
        m.id: m for m in aws.inventory.list_machines(InventoryScope(include_tags={"group": unique_name}))
    }
    assert set(found) == {linux, windows}
    assert found[linux].platform == "linux" and found[linux].name == "web"
    assert found[windows].platform == "windows" and found[windows].tags["group"] == unique_name
    assert found[linux].state == "running" and found[linux].region == "us-east-1"
    excluded = aws.inventory.list_machines(
        InventoryScope(include_tags={"group": unique_name}, exclude_ids=(windows,))
    )
    assert [m.id for m in excluded] == [linux]
    windows_only = InventoryScope(include_tags={"group": unique_name}, platforms=(Platform.WINDOWS,))
    assert [m.id for m in aws.inventory.list_machines(windows_only)] == [windows]


def test_paginates_past_one_page(moto_server: MotoServer, unique_name: str) -> None:
    """moto paginates by reservation: 7 reservations with a page size of 5 need two pages."""
    from cloudkeep.providers.aws import inventory

    ids = {
        i
        for _ in range(7)
        for i in _launch(moto_server.endpoint, "eu-west-1", LINUX_AMI, {"batch": unique_name})
    }
    provider = get_provider("aws", KEYS, {"endpoint_url": moto_server.endpoint, "region": "eu-west-1"})
    original = inventory.PAGE_SIZE
    inventory.PAGE_SIZE = 5
    try:
        found = {
            m.id
            for m in provider.inventory.list_machines(InventoryScope(include_tags={"batch": unique_name}))
        }
    finally:
        inventory.PAGE_SIZE = original
    assert found == ids


def test_regions_are_separate(aws: AwsProvider, moto_server: MotoServer, unique_name: str) -> None:
    [west] = _launch(moto_server.endpoint, "us-west-2", LINUX_AMI, {"r": unique_name})
    scope = InventoryScope(include_tags={"r": unique_name})
    assert list(aws.inventory.list_machines(scope)) == []  # default region us-east-1 only
    [machine] = aws.inventory.list_machines(
        InventoryScope(regions=("us-west-2",), include_tags={"r": unique_name})
    )
    assert machine.id == west and machine.region == "us-west-2"


def test_boot_mode_from_image(aws: AwsProvider, moto_server: MotoServer, unique_name: str) -> None:
    """moto's DescribeImages says BootMode "uefi" for every image, so that is what inventory reports."""
    ec2 = boto3.client("ec2", endpoint_url=moto_server.endpoint, region_name="us-east-1", **KEYS)
    image = ec2.register_image(Name=unique_name, BootMode="uefi", RootDeviceName="/dev/xvda")["ImageId"]
    [uefi] = _launch(moto_server.endpoint, "us-east-1", image, {"boot": unique_name})
    [stock] = _launch(moto_server.endpoint, "us-east-1", LINUX_AMI, {"boot": unique_name})
    machine = aws.inventory.get_machine(uefi)
    assert machine is not None
    assert (
        machine.boot_mode == "uefi" and machine.secure_boot is None
    )  # EC2 does not expose Secure Boot plainly
    assert aws.inventory.get_machine(stock).boot_mode == "uefi"  # type: ignore[union-attr]


def test_legacy_bios_means_no_secure_boot() -> None:
    """Pure mapping (moto cannot produce a legacy-BIOS image): BIOS boot rules Secure Boot out."""
    from cloudkeep.providers.aws.inventory import _machine

    instance = {
        "InstanceId": "i-1",
        "BootMode": "legacy-bios",
        "Platform": "windows",
        "State": {"Name": "stopped"},
    }
    machine = _machine(instance, "eu-west-1", None)
    assert (machine.boot_mode, machine.secure_boot, machine.platform, machine.state) == (
        "legacy-bios", False, "windows", "stopped",
    )  # fmt: skip


def test_ownership_tag_round_trip(aws: AwsProvider, moto_server: MotoServer, unique_name: str) -> None:
    [instance] = _launch(moto_server.endpoint, "us-east-1", LINUX_AMI, {"own": unique_name})
    aws.inventory.set_tag(instance, "cloudkeep:server", "srv-1")
    assert aws.inventory.get_machine(instance).tags["cloudkeep:server"] == "srv-1"  # type: ignore[union-attr]
    aws.inventory.remove_tag(instance, "cloudkeep:server")
    assert "cloudkeep:server" not in aws.inventory.get_machine(instance).tags  # type: ignore[union-attr]
    assert aws.inventory.get_machine("i-0000000000000dead") is None
    with pytest.raises(NotFoundError):
        aws.inventory.set_tag("i-0000000000000dead", "k", "v")


def test_unknown_region_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown AWS region 'mars-north-1'"):
        get_provider("aws", KEYS, {"region": "mars-north-1"})
