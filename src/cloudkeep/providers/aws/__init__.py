"""The AWS provider: EC2 inventory, SSM Run Command, SQS queues, S3 storage with STS credentials."""

from cloudkeep.providers.aws.provider import AwsProvider, create_aws_provider

__all__ = ["AwsProvider", "create_aws_provider"]
