"""What cloudkeep knows about AWS without importing boto3 (see ``cloudkeep.providers.facts``)."""

from cloudkeep.providers.facts import ApiRate, CredentialField, ProviderFacts

FACTS = ProviderFacts(
    kind="aws",
    factory="cloudkeep.providers.aws.provider:create_aws_provider",
    queue_opener="cloudkeep.providers.aws.queues:open_sqs_queue",
    fallback_channel="ssm",
    server_queue_wait=20.0,  # SQS long polling
    # EC2's documented request token buckets, per account and region: non-mutating (Describe*)
    # 100 / 20 per s, mutating (CreateTags, …) 200 / 5 per s. SSM (SendCommand, GetCommandInvocation)
    # throttles per account and region too, without published buckets: paced as EC2's. Check the
    # live pages (docs/scale.md) before relying on an exact figure.
    api_rates=(("read", ApiRate(burst=100, per_second=20.0)), ("write", ApiRate(burst=200, per_second=5.0))),
    api_rate_scope="region",
    credential_fields=(
        CredentialField(
            "aws_access_key_id", "AWS access key id.", env="AWS_ACCESS_KEY_ID", flag="--access-key-id"
        ),
        CredentialField(
            "aws_secret_access_key",
            "AWS secret access key.",
            secret=True,
            env="AWS_SECRET_ACCESS_KEY",
            prompt_after="aws_access_key_id",  # without keys boto3's default chain applies
        ),
        CredentialField("aws_session_token", "AWS session token.", secret=True, env="AWS_SESSION_TOKEN"),
        CredentialField("role_arn", "AWS: assume this role first."),
        CredentialField("external_id", "AWS: external id for the role."),
    ),
)
