"""What cloudkeep knows about the local provider (see ``cloudkeep.providers.facts``)."""

from cloudkeep.providers.facts import CredentialField, ProviderFacts

FACTS = ProviderFacts(
    kind="local",
    factory="cloudkeep.providers.local.provider:create_local_provider",
    queue_opener="cloudkeep.providers.local.queues:open_local_queue",
    fallback_channel="local",
    # SQLite has no long poll, and a poll is cheap: short waits keep commands snappy.
    server_queue_wait=0.25,
    machine_queue_wait_cap=0.25,
    credential_fields=(CredentialField("lab_dir", "local provider: the lab folder.", in_options=True),),
)
