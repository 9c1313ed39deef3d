"""The AWS provider: EC2 inventory, SSM Run Command, SQS, S3 + STS.

Credential: ``{aws_access_key_id, aws_secret_access_key, [aws_session_token], [role_arn],
[external_id]}`` or ``{}`` for the default credential chain. Options: ``region``, ``regions``,
``endpoint_url`` (all clients, for moto), ``max_attempts``, ``ssm_output_bucket``,
``ssm_output_prefix``, ``agent_role_arn`` (role agents' scoped credentials assume),
``machine_credentials`` (only for labs/moto: keys handed to machines in queue connection info).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cloudkeep.errors import AuthenticationError, PermissionDeniedError
from cloudkeep.providers.aws.commands import SsmCommandChannel
from cloudkeep.providers.aws.inventory import Ec2Inventory
from cloudkeep.providers.aws.queues import SqsQueueService
from cloudkeep.providers.aws.session import AwsSession, aws_errors, error_code
from cloudkeep.providers.aws.storage import S3StorageService
from cloudkeep.providers.base import CloudProvider, register_provider

_DRY_RUN_OK = {"DryRunOperation"}


class AwsProvider(CloudProvider):
    kind = "aws"

    def __init__(self, credential: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.session = AwsSession(credential, options)
        self._inventory = Ec2Inventory(self.session)
        self._commands = SsmCommandChannel(
            self.session,
            options.get("ssm_output_bucket"),
            str(options.get("ssm_output_prefix") or "cloudkeep/ssm"),
            poll_interval=float(options.get("ssm_poll_interval", 0.25)),
        )
        self._queues = SqsQueueService(self.session, options.get("machine_credentials"))
        self._storage = S3StorageService(self.session, agent_role_arn=options.get("agent_role_arn"))

    @property
    def inventory(self) -> Ec2Inventory:
        return self._inventory

    @property
    def commands(self) -> SsmCommandChannel:
        return self._commands

    @property
    def queues(self) -> SqsQueueService:
        return self._queues

    @property
    def storage(self) -> S3StorageService:
        return self._storage

    def whoami(self) -> str:
        """The ARN behind the credential; raises AuthenticationError for wrong or expired keys."""
        with aws_errors("sts:GetCallerIdentity"):
            return str(self.session.client("sts").get_caller_identity()["Arn"])

    def check_permissions(self) -> list[str]:
        """Dry-run checks of the server's documented actions (IAM policy simulation is not used:
        it needs iam:SimulatePrincipalPolicy, which moto does not implement and users rarely grant).

        EC2 calls use ``DryRun``; the others are harmless reads standing in for their family
        (``ssm:ListCommands`` for Run Command, ``sqs:ListQueues`` for queues, ``s3:ListAllMyBuckets``
        for storage). Wrong or expired keys raise AuthenticationError instead of a list.
        """
        self.whoami()
        ec2 = self.session.client("ec2")
        checks: list[tuple[str, Callable[[], Any]]] = [
            ("ec2:DescribeInstances", lambda: ec2.describe_instances(DryRun=True, MaxResults=5)),
            ("ec2:DescribeImages", lambda: ec2.describe_images(DryRun=True, Owners=["self"])),
            (
                "ec2:CreateTags",
                lambda: ec2.create_tags(DryRun=True, Resources=["i-00000000000000000"], Tags=[]),
            ),
            ("ssm:ListCommands", lambda: self.session.client("ssm").list_commands(MaxResults=1)),
            ("sqs:ListQueues", lambda: self.session.client("sqs").list_queues(MaxResults=1)),
            ("s3:ListAllMyBuckets", lambda: self.session.client("s3").list_buckets()),
        ]
        missing = []
        for action, call in checks:
            try:
                call()
            except ClientError as error:
                code = error_code(error)
                if code in _DRY_RUN_OK:
                    continue
                try:
                    with aws_errors(action):
                        raise error
                except PermissionDeniedError:
                    missing.append(action)
                except AuthenticationError:
                    raise
                except Exception:  # other failures (e.g. bad dry-run args) prove access
                    continue
            except BotoCoreError as error:
                with aws_errors(action):
                    raise error
        return missing


@register_provider("aws")
def create_aws_provider(credential: Mapping[str, Any], options: Mapping[str, Any]) -> AwsProvider:
    return AwsProvider(credential, options)
