"""What cloudkeep knows about Azure without importing its SDK (see ``cloudkeep.providers.facts``)."""

from cloudkeep.providers.facts import CredentialField, ProviderFacts

FACTS = ProviderFacts(
    kind="azure",
    factory="cloudkeep.providers.azure.provider:create_azure_provider",
    queue_opener="cloudkeep.providers.azure.queues:open_azure_queue",
    fallback_channel="runcommand",
    server_queue_wait=5.0,  # Queue Storage has no long poll: receives are polled within this wait
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
