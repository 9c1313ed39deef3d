"""Azure SDK failures as cloudkeep errors: the one place azure-core exceptions are translated.

``raise_translated`` / ``azure_errors`` serve the control plane (ARM, queues, run commands in
``providers/azure``); ``raise_store_error`` serves objects in a repository
(``cloudkeep.storage.azure_blob``), where a missing blob is an ``ObjectNotFoundError`` and an
immutability refusal an ``ObjectLockedError``. It imports only azure-core, so the blob backend
can use it without the rest of the Azure provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from cloudkeep.errors import (
    AuthenticationError,
    CloudkeepError,
    NotFoundError,
    PermissionDeniedError,
    ThrottledError,
    UnreachableError,
)
from cloudkeep.storage.base import ObjectExistsError, ObjectLockedError, ObjectNotFoundError


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
            raise (ThrottledError if status == 429 else UnreachableError)(
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


def raise_store_error(exc: Exception, action: str, *, store: str, where: str) -> NoReturn:
    """Re-raise a failed blob operation of the Azure backend (``store`` names it, ``where`` the blob)."""
    if isinstance(exc, ResourceNotFoundError):
        if getattr(exc, "error_code", None) == "ContainerNotFound":
            raise NotFoundError(
                f"{where}: container does not exist", hint="create it or fix the URL"
            ) from exc
        raise ObjectNotFoundError(f"{where}: object does not exist") from exc
    code = getattr(exc, "error_code", None) or ""
    if "Immutab" in str(code):
        raise ObjectLockedError(
            f"{where}: refused by an immutability policy ({code})",
            hint="blobs under immutability cannot be deleted or overwritten before their retention ends",
        ) from exc
    if isinstance(exc, (ResourceExistsError, ResourceModifiedError)):
        raise ObjectExistsError(f"{where}: already exists") from exc
    if isinstance(exc, ClientAuthenticationError) or (
        isinstance(exc, HttpResponseError) and exc.status_code == 403
    ):
        raise PermissionDeniedError(
            f"{where}: access denied for {action}",
            hint="grant this permission to the credential or SAS in use",
        ) from exc
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        raise UnreachableError(
            f"{store}: cannot reach the Blob endpoint ({exc.message})",
            hint="check the account URL, network and proxy settings",
        ) from exc
    if isinstance(exc, AzureError):
        # the SDK's text runs on with the raw response body: its first line and the code say it
        first = (str(getattr(exc, "message", "") or exc).splitlines() or [""])[0]
        raise UnreachableError(f"{where}: {action} failed: {code + ': ' if code else ''}{first}") from exc
    raise exc
