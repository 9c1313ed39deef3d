"""Repository access for agents (scoped, expiring) and for the administrator's machine (full).

Agents get credentials from ``provider.storage.scoped_credentials`` that expire and are refreshed
for long tasks; the repository password travels only in a message's sealed field. The server
never moves backup data: it builds these access descriptions and hands them out.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from cloudkeep.errors import ConfigurationError, NotFoundError
from cloudkeep.providers.base import CloudProvider
from cloudkeep.repo.layout import writer_namespace
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import BackupJob, Repository

DEFAULT_CREDENTIALS_TTL = 3600


def agent_write_prefix(machine_id: str) -> str:
    """The key prefix an agent's scoped credentials may write under: its machine's writer namespace.

    The agent opens the repository with the same prefix as ``writer_prefix``, so every pack, index
    file, restore point and marker it creates lands there, while it still reads (and deduplicates
    against) every other machine's objects. Machine A's credentials thus cannot delete machine B's
    restore points where the provider enforces the prefix (local, AWS session policy).
    """
    if not machine_id or "/" in machine_id:
        raise ConfigurationError(f"machine id {machine_id!r} cannot name a repository namespace")
    return writer_namespace(machine_id)  # the machine derives the same (repo/layout.py)


def repository_password(ctx: ServerContext, repository: Repository, job: BackupJob | None = None) -> str:
    """The job's own password when it has one (``options.password_sealed``), else the repository's."""
    sealed_hex = (job.options or {}).get("password_sealed") if job is not None else None
    if sealed_hex:
        return str(ctx.secrets.open(bytes.fromhex(str(sealed_hex))))
    if repository.password is None:
        raise ConfigurationError(
            f"repository {repository.name!r} has no password stored",
            hint="a backup repository needs its password; re-attach it with --password",
        )
    return str(ctx.secrets.open(repository.password))


def load_repository(ctx: ServerContext, repository_id: str) -> Repository:
    with ctx.db() as db:
        repository = db.get(Repository, repository_id)
        if repository is None:
            raise NotFoundError(f"repository {repository_id} does not exist")
        if repository.purpose != "backup":
            raise ConfigurationError(f"repository {repository.name!r} is a {repository.purpose} repository")
        return repository


def agent_access(
    provider: CloudProvider,
    repository: Repository,
    machine_id: str,
    password: str,
    *,
    expires_seconds: int = DEFAULT_CREDENTIALS_TTL,
) -> dict[str, Any]:
    """The sealed ``repository`` of a command (RepositoryAccess): scoped store URL, options, password.

    Always scoped to the machine's own namespace and create-only: forget and prune run on the
    server with the repository's own credential, which never leaves it (docs/security.md).
    """
    prefix = agent_write_prefix(machine_id)
    creds = provider.storage.scoped_credentials(repository.location, prefix, expires_seconds=expires_seconds)
    return {
        "store_url": creds.store_url,
        "options": dict(creds.options),
        "password": password,
        "writer_prefix": prefix,
        "expires_at": creds.expires_at.astimezone(UTC).isoformat(),
    }
