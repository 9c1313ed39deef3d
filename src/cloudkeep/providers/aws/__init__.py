"""The AWS provider: EC2 inventory, SSM Run Command, SQS queues, S3 storage with STS credentials.

Importing this package imports no boto3: ``facts`` and ``errors`` are what others may import
alone; ``provider`` builds the provider (through ``cloudkeep.providers.get_provider``).
"""
