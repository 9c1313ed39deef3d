"""Azure credentials, clients and error translation for one service principal.

Credential mapping: ``{tenant_id, client_id, client_secret, subscription_id}``.

Options: ``arm_endpoint`` (default ``https://management.azure.com``; the ARM stand-in in tests),
``authority_host``, ``resource_groups`` (limit inventory), ``connection_verify`` (CA bundle path),
``token_credential`` (a ready TokenCredential object, tests only), ``polling_interval`` (seconds
between long-running-operation polls), ``retry_total`` / ``retry_backoff_factor``,
``storage_connection_string`` or ``storage_account_url`` + ``storage_credential`` (account key
or SAS) for queues, run-command output and blob storage; these ``storage_*`` keys may also be put
in the credential itself (encrypted at rest), which takes precedence.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from cloudkeep.errors import (
    AuthenticationError,
    CloudkeepError,
    ConfigurationError,
    NotFoundError,
    PermissionDeniedError,
    UnreachableError,
)

DEFAULT_ARM = "https://management.azure.com"


def raise_translated(error: Exception, action: str, target: str = "") -> NoReturn:
    """Re-raise an Azure SDK failure as the cloudkeep error an administrator can act on."""
    where = f" on {target}" if target else ""
    if isinstance(error, ClientAuthenticationError):
        raise AuthenticationError(
            f"Azure rejected the credentials ({action}{where}): {error.message}",
            hint="check tenant id, client id and secret (or the storage key/SAS) of the cloud credential",
        ) from error
    if isinstance(error, ResourceNotFoundError):
        raise NotFoundError(f"{action}{where}: not found") from error
    if isinstance(error, HttpResponseError):
        status = error.status_code or 0
        code = getattr(error.error, "code", None) or ""
        if status == 403 or code in ("AuthorizationFailed", "AuthorizationPermissionMismatch"):
            raise PermissionDeniedError(
                f"access denied for {action}{where}",
                hint="assign a role with this action to the service principal (see docs/permissions.md)",
            ) from error
        if status == 429 or status >= 500:
            raise UnreachableError(
                f"Azure kept failing {action}{where} after retries (HTTP {status})",
                hint="Azure Resource Manager throttles bursts; reduce rescan concurrency or retry later",
            ) from error
        raise CloudkeepError(
            f"Azure refused {action}{where}: HTTP {status} {code}: {error.message}"
        ) from error
    if isinstance(error, (ServiceRequestError, ServiceResponseError)):
        raise UnreachableError(
            f"cannot reach Azure for {action}{where}: {error}",
            hint="check the endpoint URL and the network path to Azure",
        ) from error
    if isinstance(error, AzureError):
        raise CloudkeepError(f"Azure client error during {action}{where}: {error}") from error
    raise error


@contextmanager
def azure_errors(
    action: str, target: str = "", *, ignore: tuple[type[Exception], ...] = ()
) -> Iterator[None]:
    """Translate SDK failures of one call; ``ignore`` lists expected ones (e.g. already exists)."""
    try:
        yield
    except ignore:
        pass
    except AzureError as error:
        raise_translated(error, action, target)


@dataclass(frozen=True)
class StorageAccount:
    """Where queues and blobs live and how to sign for them."""

    blob_endpoint: str
    queue_endpoint: str
    account_name: str
    account_key: str | None = None
    sas_token: str | None = None

    @classmethod
    def from_connection_string(cls, connection_string: str) -> StorageAccount:
        fields = dict(
            part.split("=", 1) for part in connection_string.strip().strip(";").split(";") if "=" in part
        )
        name = fields.get("AccountName", "")
        protocol = fields.get("DefaultEndpointsProtocol", "https")
        suffix = fields.get("EndpointSuffix", "core.windows.net")
        blob = fields.get("BlobEndpoint") or f"{protocol}://{name}.blob.{suffix}"
        queue = fields.get("QueueEndpoint") or f"{protocol}://{name}.queue.{suffix}"
        if not name:
            name = _account_from_url(blob)
        if not name:
            raise ConfigurationError("the storage connection string names no account")
        return cls(
            blob.rstrip("/"),
            queue.rstrip("/"),
            name,
            fields.get("AccountKey"),
            fields.get("SharedAccessSignature"),
        )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> StorageAccount | None:
        if options.get("storage_connection_string"):
            return cls.from_connection_string(str(options["storage_connection_string"]))
        url = options.get("storage_account_url")
        if not url:
            return None
        blob = str(url).rstrip("/")
        queue = str(options.get("storage_queue_url") or blob.replace(".blob.", ".queue.")).rstrip("/")
        secret = str(options.get("storage_credential") or "")
        is_sas = secret.lstrip("?").startswith(("sv=", "se=", "sp=", "ss=", "st="))
        return cls(
            blob,
            queue,
            _account_from_url(blob),
            None if is_sas else secret or None,
            secret if is_sas else None,
        )

    @property
    def credential(self) -> Any:
        """What the storage SDK clients take: a key dict, a SAS string, or None."""
        if self.account_key:
            return {"account_name": self.account_name, "account_key": self.account_key}
        return self.sas_token

    def require_key(self, purpose: str) -> str:
        if not self.account_key:
            raise ConfigurationError(
                f"{purpose} needs the storage account key",
                hint="configure storage_connection_string with AccountKey (a SAS cannot sign new SAS tokens)",
            )
        return self.account_key


def _account_from_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in ("127.0.0.1", "localhost") or host.replace(".", "").isdigit():
        return parts.path.strip("/").split("/")[0]  # path-style (Azurite): http://host:port/account
    return host.split(".")[0]


class AzureSession:
    """The service principal's token credential plus settings shared by every Azure client."""

    def __init__(self, credential: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.subscription_id = str(credential.get("subscription_id") or "")
        if not self.subscription_id:
            raise ConfigurationError("the Azure credential needs subscription_id")
        self.arm_endpoint = str(options.get("arm_endpoint") or DEFAULT_ARM).rstrip("/")
        self.resource_groups: tuple[str, ...] = tuple(options.get("resource_groups") or ())
        self.polling_interval = float(options.get("polling_interval", 5.0))
        self.client_kwargs: dict[str, Any] = {
            "retry_total": int(options.get("retry_total", 6)),
            "retry_backoff_factor": float(options.get("retry_backoff_factor", 0.8)),
        }
        if options.get("connection_verify") is not None:
            self.client_kwargs["connection_verify"] = options["connection_verify"]
        self.token_credential = options.get("token_credential") or self._service_principal(
            credential, options
        )
        # The storage account's key or SAS may live in the (encrypted) credential instead of the
        # options, e.g. `credential add --secret storage_connection_string`; the credential wins.
        secret_storage = {k: v for k, v in credential.items() if k.startswith("storage_") and v}
        self.storage = StorageAccount.from_options({**options, **secret_storage})
        self._compute: Any = None

    @staticmethod
    def _service_principal(credential: Mapping[str, Any], options: Mapping[str, Any]) -> Any:
        missing = [k for k in ("tenant_id", "client_id", "client_secret") if not credential.get(k)]
        if missing:
            raise ConfigurationError(f"the Azure credential lacks {', '.join(missing)}")
        from azure.identity import ClientSecretCredential

        extra = {"authority": options["authority_host"]} if options.get("authority_host") else {}
        return ClientSecretCredential(
            credential["tenant_id"], credential["client_id"], credential["client_secret"], **extra
        )

    @property
    def compute(self) -> Any:
        if self._compute is None:
            from azure.mgmt.compute import ComputeManagementClient

            kwargs = dict(self.client_kwargs)
            if self.arm_endpoint != DEFAULT_ARM:  # sovereign clouds and the test stand-in
                kwargs["credential_scopes"] = [f"{self.arm_endpoint}/.default"]
            self._compute = ComputeManagementClient(
                self.token_credential, self.subscription_id, base_url=self.arm_endpoint, **kwargs
            )
        return self._compute

    def require_storage(self, purpose: str) -> StorageAccount:
        if self.storage is None:
            raise ConfigurationError(
                f"{purpose} needs an Azure storage account",
                hint="set the option storage_connection_string (or storage_account_url + storage_credential)",
            )
        return self.storage

    def close(self) -> None:
        if self._compute is not None:
            self._compute.close()
            self._compute = None
