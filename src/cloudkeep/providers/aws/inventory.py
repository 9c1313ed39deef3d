"""EC2 inventory: DescribeInstances per region, paginated, filtered on the client side.

Tag and platform filters run here rather than in the API: scope tag keys compare
case-insensitively (EC2 filters do not), and moto's ``platform`` filter is not implemented.
Boot mode comes from the instance (``CurrentInstanceBootMode``/``BootMode``) or its image
(``BootMode``). Secure Boot is reported only where the API says so: legacy BIOS means no
Secure Boot; for UEFI machines EC2 exposes the state only inside the opaque
``GetInstanceUefiData`` variable store, so it stays ``None`` ("unknown") and the prerequisite
check on the machine decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cloudkeep.errors import NotFoundError
from cloudkeep.providers.aws.errors import aws_errors
from cloudkeep.providers.aws.session import AwsSession
from cloudkeep.providers.base import Inventory, InventoryScope, Machine, Platform

LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
PAGE_SIZE = 500


class Ec2Inventory(Inventory):
    def __init__(self, session: AwsSession) -> None:
        self.session = session
        self._region_of: dict[str, str] = {}

    def _describe(self, region: str, filters: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        ec2 = self.session.client("ec2", region)
        paginator = ec2.get_paginator("describe_instances")
        pages = paginator.paginate(Filters=filters, PaginationConfig={"PageSize": PAGE_SIZE})
        with aws_errors("ec2:DescribeInstances", region):
            for page in pages:
                for reservation in page.get("Reservations", []):
                    yield from reservation.get("Instances", [])

    def _image_boot_modes(self, region: str, image_ids: set[str]) -> dict[str, str]:
        if not image_ids:
            return {}
        ec2 = self.session.client("ec2", region)
        with aws_errors("ec2:DescribeImages", region):
            images = ec2.describe_images(ImageIds=sorted(image_ids)).get("Images", [])
        return {image["ImageId"]: image["BootMode"] for image in images if image.get("BootMode")}

    def _machines(self, region: str, filters: list[dict[str, Any]]) -> Iterator[Machine]:
        batch: list[dict[str, Any]] = []
        for instance in self._describe(region, filters):
            batch.append(instance)
            if len(batch) >= PAGE_SIZE:
                yield from self._convert(region, batch)
                batch = []
        yield from self._convert(region, batch)

    def _convert(self, region: str, instances: list[dict[str, Any]]) -> Iterator[Machine]:
        needs_image = {i["ImageId"] for i in instances if i.get("ImageId") and not _instance_boot_mode(i)}
        image_modes = self._image_boot_modes(region, needs_image) if needs_image else {}
        for instance in instances:
            self._region_of[instance["InstanceId"]] = region
            yield _machine(instance, region, image_modes.get(instance.get("ImageId", "")))

    def list_machines(self, scope: InventoryScope) -> Iterator[Machine]:
        filters: list[dict[str, Any]] = [{"Name": "instance-state-name", "Values": LIVE_STATES}]
        if scope.machine_ids:
            filters.append({"Name": "instance-id", "Values": list(scope.machine_ids)})
        for region in scope.regions or self.session.regions:
            for machine in self._machines(region, filters):
                if scope.matches(machine):
                    yield machine

    def _find(self, machine_id: str) -> Machine | None:
        filters = [{"Name": "instance-id", "Values": [machine_id]}]
        regions = (
            [self._region_of[machine_id]] if machine_id in self._region_of else list(self.session.regions)
        )
        for region in regions:
            for machine in self._machines(region, filters):
                return machine
        return None

    def get_machine(self, machine_id: str) -> Machine | None:
        return self._find(machine_id)

    def _region_for(self, machine_id: str) -> str:
        if machine_id not in self._region_of and self._find(machine_id) is None:
            raise NotFoundError(
                f"EC2 instance {machine_id} not found in regions {', '.join(self.session.regions)}"
            )
        return self._region_of[machine_id]

    def set_tag(self, machine_id: str, key: str, value: str) -> None:
        region = self._region_for(machine_id)
        with aws_errors("ec2:CreateTags", machine_id):
            self.session.client("ec2", region).create_tags(
                Resources=[machine_id], Tags=[{"Key": key, "Value": value}]
            )

    def remove_tag(self, machine_id: str, key: str) -> None:
        region = self._region_for(machine_id)
        with aws_errors("ec2:DeleteTags", machine_id):
            self.session.client("ec2", region).delete_tags(Resources=[machine_id], Tags=[{"Key": key}])


def _instance_boot_mode(instance: dict[str, Any]) -> str | None:
    mode = instance.get("CurrentInstanceBootMode") or instance.get("BootMode")
    return str(mode) if mode else None


def _platform(instance: dict[str, Any]) -> Platform:
    details = f"{instance.get('Platform', '')} {instance.get('PlatformDetails', '')}".lower()
    return Platform.WINDOWS if "windows" in details else Platform.LINUX


def _machine(instance: dict[str, Any], region: str, image_boot_mode: str | None) -> Machine:
    tags = {t["Key"]: t.get("Value", "") for t in instance.get("Tags", [])}
    boot_mode = _instance_boot_mode(instance) or image_boot_mode
    if boot_mode == "uefi-preferred":  # the instance type decides; Nitro types boot UEFI
        boot_mode = "uefi"
    return Machine(
        id=instance["InstanceId"],
        name=tags.get("Name") or instance["InstanceId"],
        platform=_platform(instance),
        state=instance.get("State", {}).get("Name", "unknown"),
        region=region,
        tags=tags,
        boot_mode=boot_mode,
        secure_boot=False if boot_mode == "legacy-bios" else None,
        private_ip=instance.get("PrivateIpAddress"),
        hostname=instance.get("PrivateDnsName") or None,
        extra={
            "image_id": instance.get("ImageId"),
            "instance_type": instance.get("InstanceType"),
            "iam_instance_profile": (instance.get("IamInstanceProfile") or {}).get("Arn"),
        },
    )
