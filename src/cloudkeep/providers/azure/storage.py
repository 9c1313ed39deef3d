"""Azure Blob as the control plane sees it: containers, blob SAS URLs, container SAS for agents.

A *location* is ``container[/prefix]``.

Scoped credentials, real cloud vs emulator: Azure can confine a SAS to a directory only on
accounts with a hierarchical namespace (ADLS Gen2: a directory SAS, ``sr=d``, ideally a
user-delegation SAS signed with an Entra ID key rather than the account key). On the flat
namespace that cloudkeep repositories use — and on Azurite, which has no hierarchical namespace
and no user-delegation SAS over plain HTTP — the nearest equivalent is a **container SAS** with
read/list/add/create/write/delete, valid until ``expires_at``: it can reach outside the agent's
prefix, so immutability guards restore points and the repository format does not trust other
machines' prefixes (every object is authenticated by the repository key).
Azurite enforces the SAS (permissions, expiry, signature); tests check that.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)

from cloudkeep.compat import UTC
from cloudkeep.errors import ConfigurationError, NotFoundError
from cloudkeep.providers.azure.errors import azure_errors
from cloudkeep.providers.azure.session import AzureSession, StorageAccount
from cloudkeep.providers.base import ScopedCredentials, StorageService
from cloudkeep.storage.azure_blob import AzureBlobStore
from cloudkeep.storage.base import ObjectStore, open_store

CLOCK_SKEW = timedelta(minutes=5)


def split_location(location: str) -> tuple[str, str]:
    container, _, prefix = location.removeprefix("azure://").strip("/").partition("/")
    if not container:
        raise ConfigurationError(
            f"Azure location {location!r} needs a container", hint="use container[/prefix]"
        )
    return container, prefix.strip("/")


class AzureBlobStorageService(StorageService):
    def __init__(self, session: AzureSession) -> None:
        self.session = session

    @property
    def account(self) -> StorageAccount:
        return self.session.require_storage("Azure blob storage")

    def _store_options(self, account: StorageAccount) -> dict[str, Any]:
        return {"account_url": account.blob_endpoint, "credential": account.account_key or account.sas_token}

    def open_store(self, location: str) -> ObjectStore:
        container, prefix = split_location(location)
        return open_store(f"azure://{container}/{prefix}", **self._store_options(self.account))

    def ensure_container(self, location: str, *, object_lock: bool = False) -> None:
        """Create the container. Immutability (``object_lock``) is configured on the account/container
        through the management plane (version-level immutability); the blob backend then sets
        per-blob retention. Azurite has none, and the backend documents its stand-in."""
        container, _ = split_location(location)
        service = BlobServiceClient(self.account.blob_endpoint, credential=self.account.credential)
        with azure_errors(
            "Microsoft.Storage/storageAccounts/blobServices/containers/write",
            container,
            ignore=(ResourceExistsError,),
        ):
            service.create_container(container)

    def signed_url(
        self, location: str, key: str, *, method: Literal["GET", "PUT"], expires_seconds: int
    ) -> str:
        container, prefix = split_location(location)
        blob = "/".join(p for p in (prefix, key.strip("/")) if p)
        now = datetime.now(UTC)
        permission = (
            BlobSasPermissions(read=True) if method == "GET" else BlobSasPermissions(create=True, write=True)
        )
        sas = generate_blob_sas(
            self.account.account_name, container, blob, account_key=self.account.require_key("signing a URL"),
            permission=permission, start=now - CLOCK_SKEW, expiry=now + timedelta(seconds=expires_seconds),
        )  # fmt: skip
        return f"{self.account.blob_endpoint}/{container}/{quote(blob)}?{sas}"

    def scoped_credentials(self, location: str, prefix: str, *, expires_seconds: int) -> ScopedCredentials:
        container, base = split_location(location)
        now = datetime.now(UTC)
        expires_at = now + timedelta(seconds=expires_seconds)
        sas = generate_container_sas(
            self.account.account_name, container, account_key=self.account.require_key("scoped credentials"),
            # Add, never destroy (docs/security.md): create (`c` cannot replace an existing blob),
            # read and list only — no write (`w` overwrites), no delete, no immutability (`i`).
            # Retention and prune run on the server with the account's own credential.
            permission=ContainerSasPermissions(read=True, list=True, create=True),
            start=now - CLOCK_SKEW, expiry=expires_at,
        )  # fmt: skip
        options: dict[str, Any] = {"account_url": self.account.blob_endpoint, "credential": sas}
        mode = self._immutability_mode(location)
        if mode is not None:  # an agent's container SAS cannot read the container's settings
            options["immutability"] = mode
        return ScopedCredentials(
            provider="azure",
            store_url=f"azure://{container}/{base}".rstrip("/"),
            options=options,
            expires_at=expires_at,
        )

    def _immutability_mode(self, location: str) -> str | None:
        """The container's immutability (see storage/azure_blob.py); ``None`` before it exists."""
        store = self.open_store(location)
        try:
            return store.immutability_mode if isinstance(store, AzureBlobStore) else None
        except NotFoundError:
            return None
        finally:
            store.close()
