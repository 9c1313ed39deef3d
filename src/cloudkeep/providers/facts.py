"""What the rest of cloudkeep may know about a cloud, stated by the cloud's own folder.

Each provider folder has a ``facts.py`` holding one ``ProviderFacts``. It imports no cloud SDK,
so the CLI can build its credential options and the server can list provider names without
importing boto3 or the Azure SDK; the provider itself (``factory``) and its queue opener
(``queue_opener``) are named by module path and imported only when first used.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CredentialField:
    """One field of a cloud credential; ``cloudkeep credential add`` builds its options from these."""

    key: str  # the key in the credential mapping (or in the options, with ``in_options``)
    help: str
    secret: bool = False  # never a command-line value: --from-env, --secret KEY or a hidden prompt
    env: str | None = None  # the environment variable --from-env reads
    flag: str | None = None  # the command-line option of a non-secret field (default: --<key-with-dashes>)
    prompt_after: str | None = None  # prompt (hidden) for this secret when that other field was given
    in_options: bool = False  # stored in clear with the provider options, not with the secrets

    @property
    def option(self) -> str:
        return self.flag or "--" + self.key.replace("_", "-")


@dataclass(frozen=True)
class ApiRate:
    """A cloud API's token bucket as published: ``burst`` calls at once, refilled ``per_second``."""

    burst: int
    per_second: float


@dataclass(frozen=True)
class ProviderFacts:
    """A cloud's answers to the questions the server, the machine side and the CLI ask about it."""

    kind: str  # the provider's registered name
    factory: str  # "module:callable" building the provider from (credential, options)
    queue_opener: str  # "module:callable" opening a queue from its ``connection_info``
    fallback_channel: str  # how command records name the cloud's own command channel
    # How long one receive on the server queue waits: a native long poll where the queue has
    # one, else short (a poll of a polled queue is cheap locally, costs requests in the cloud).
    server_queue_wait: float
    # The longest a machine's receive should wait, where polls are cheap and latency matters.
    machine_queue_wait_cap: float | None = None
    credential_fields: tuple[CredentialField, ...] = ()
    # The control-plane API's published rate limits ("read" / "write" calls) that rescan and
    # deployment pace themselves to, per ``api_rate_scope``: "region" (one bucket per account and
    # region, as EC2/SSM count) or "account" (one per credential, as Azure counts per subscription).
    api_rates: tuple[tuple[str, ApiRate], ...] = ()
    api_rate_scope: str = "account"

    def field(self, key: str) -> CredentialField | None:
        return next((f for f in self.credential_fields if f.key == key), None)
