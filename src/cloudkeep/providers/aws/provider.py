"""The AWS provider: EC2 inventory, SSM Run Command, SQS, S3 + STS.

Credential: ``{aws_access_key_id, aws_secret_access_key, [aws_session_token], [role_arn],
[external_id]}`` or ``{}`` for the default credential chain. Options: ``region``, ``regions``,
``endpoint_url`` (all clients, for moto), ``max_attempts``, ``ssm_output_bucket``,
``ssm_output_prefix``, ``agent_role_arn`` (role agents' scoped credentials assume),
``machine_credentials`` (only for labs/moto: keys handed to machines in queue connection info),
``sts_endpoint_url``, ``ca_bundle``, checksum settings (see session.py). The credential may add
``agent_access_key_id`` / ``agent_secret_access_key``: the key agents get where the endpoint
has no STS (see providers/aws/storage.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from cloudkeep.errors import AuthenticationError, ConfigurationError, NotSupportedError, PermissionDeniedError
from cloudkeep.providers.aws.commands import SsmCommandChannel
from cloudkeep.providers.aws.errors import aws_errors, error_code
from cloudkeep.providers.aws.facts import FACTS
from cloudkeep.providers.aws.inventory import Ec2Inventory
from cloudkeep.providers.aws.queues import SqsQueueService
from cloudkeep.providers.aws.session import AwsSession
from cloudkeep.providers.aws.storage import S3StorageService
from cloudkeep.providers.base import CloudProvider

_DRY_RUN_OK = {"DryRunOperation"}


class AwsProvider(CloudProvider):
    facts = FACTS

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
        self._storage = S3StorageService(
            self.session,
            agent_role_arn=options.get("agent_role_arn"),
            agent_key=_agent_key(credential, options),
        )

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

    def check_configuration(self) -> list[str]:
        if not self._commands.output_bucket:
            return [
                "ssm_output_bucket is not set: Run Command (agent deployment by rescan, and the "
                "fallback when a machine's queue is silent) cannot return its output; set the "
                "credential's option ssm_output_bucket=<bucket> (a bucket the machines may write to)"
            ]
        return []

    def check_permissions(self) -> list[str]:
        """Dry-run checks of the server's documented actions (IAM policy simulation is not used:
        it needs iam:SimulatePrincipalPolicy, which moto does not implement and users rarely grant).

        EC2 calls use ``DryRun``; the others are harmless reads standing in for their family
        (``ssm:ListCommands`` for Run Command, ``sqs:ListQueues`` for queues, ``s3:ListAllMyBuckets``
        for storage). Wrong or expired keys raise AuthenticationError instead of a list.
        """
        missing = []
        try:
            self.whoami()
        except NotSupportedError:  # an S3-compatible store without STS: the other checks still tell
            missing.append("sts:GetCallerIdentity (not implemented at this endpoint)")
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
                except NotSupportedError:
                    missing.append(f"{action} (not implemented at this endpoint)")
                except AuthenticationError:
                    raise
                except Exception:  # other failures (e.g. bad dry-run args) prove access
                    continue
            except ResponseParserError:  # not an AWS answer: the endpoint lacks this service
                missing.append(f"{action} (not implemented at this endpoint)")
            except BotoCoreError as error:
                with aws_errors(action):
                    raise error
        return missing


def _agent_key(credential: Mapping[str, Any], options: Mapping[str, Any]) -> tuple[str, str] | None:
    """The key agents use where the endpoint has no STS (S3-compatible stores)."""
    key_id = credential.get("agent_access_key_id") or options.get("agent_access_key_id")
    secret = credential.get("agent_secret_access_key") or options.get("agent_secret_access_key")
    if not key_id and not secret:
        return None
    if not (key_id and secret):
        raise ConfigurationError("an agent key needs both agent_access_key_id and agent_secret_access_key")
    return str(key_id), str(secret)


def create_aws_provider(credential: Mapping[str, Any], options: Mapping[str, Any]) -> AwsProvider:
    return AwsProvider(credential, options)
