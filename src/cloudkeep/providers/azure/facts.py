"""What cloudkeep knows about Azure without importing its SDK (see ``cloudkeep.providers.facts``)."""

from cloudkeep.providers.facts import ApiRate, CredentialField, ProviderFacts

FACTS = ProviderFacts(
    kind="azure",
    factory="cloudkeep.providers.azure.provider:create_azure_provider",
    queue_opener="cloudkeep.providers.azure.queues:open_azure_queue",
    fallback_channel="runcommand",
    server_queue_wait=5.0,  # Queue Storage has no long poll: receives are polled within this wait
    # Azure Resource Manager, per subscription (our credential): bursts of 250 reads / 200 writes,
    # refilling 25 / 10 per second (shared notes, cloud-limits.md). Run Command is a write.
    api_rates=(("read", ApiRate(burst=250, per_second=25.0)), ("write", ApiRate(burst=200, per_second=10.0))),
    api_rate_scope="account",
    credential_fields=(
        CredentialField("tenant_id", "Azure tenant id.", env="AZURE_TENANT_ID"),
        CredentialField("client_id", "Azure client (application) id.", env="AZURE_CLIENT_ID"),
        CredentialField(
            "client_secret",
            "Azure client secret.",
            secret=True,
            env="AZURE_CLIENT_SECRET",
            prompt_after="client_id",
        ),
        CredentialField("subscription_id", "Azure subscription id."),
    ),
)
