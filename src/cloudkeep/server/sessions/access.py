"""Repository access for agents (scoped, expiring) and for the administrator's machine (full).

Agents get credentials from ``provider.storage.scoped_credentials`` that expire and are refreshed
for long tasks; their keys travel only in a message's sealed field: the repository password for
formats 1-2, a writer bundle (and a restore's granted keys) for format 3. The server opens
repositories one way (``open_with_full_keys`` / ``opened_repository``). It never moves backup
data: it builds these access descriptions and hands them out.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cloudkeep import repo as engine
from cloudkeep.errors import ConfigurationError, NotFoundError
from cloudkeep.providers.base import CloudProvider
from cloudkeep.repo.confidential import CONFIDENTIAL_FORMAT
from cloudkeep.repo.grants import restore_keys
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


def open_with_full_keys(
    provider: CloudProvider, location: str, password: str, *, load_index: bool = True
) -> engine.Repository:
    """The one way the server opens a repository: with the password, which opens every format's keys
    (format 3: the private key, sealed in the repository's key material under the master key).

    The caller closes it with ``close_opened``; ``opened_repository`` does both for a catalogued one.
    """
    store = provider.storage.open_store(location)
    try:
        return engine.Repository.open(store, password, load_index=load_index)
    except BaseException:
        store.close()
        raise


def close_opened(repo: engine.Repository) -> None:
    repo.close()
    repo.store.close()


@contextmanager
def opened_repository(
    ctx: ServerContext,
    repository: Repository,
    job: BackupJob | None = None,
    *,
    password: str | None = None,
    load_index: bool = True,
) -> Iterator[engine.Repository]:
    """A catalogued repository opened here with the server's full keys (never handed to machines).

    ``password``: one the administrator typed (download, export), else the job's or the repository's.
    """
    provider = ctx.provider_for(repository.credential_id)
    try:
        repo = open_with_full_keys(
            provider, repository.location, password or repository_password(ctx, repository, job),
            load_index=load_index,
        )  # fmt: skip
        try:
            yield repo
        finally:
            close_opened(repo)
    finally:
        provider.close()


def load_repository(ctx: ServerContext, repository_id: str) -> Repository:
    with ctx.db() as db:
        repository = db.get(Repository, repository_id)
        if repository is None:
            raise NotFoundError(f"repository {repository_id} does not exist")
        if repository.purpose != "backup":
            raise ConfigurationError(f"repository {repository.name!r} is a {repository.purpose} repository")
        return repository


@dataclass(frozen=True)
class RestoreGrant:
    """A restore or browse through a machine of a format 3 repository: what it will read."""

    snapshot_id: str
    paths: list[str] | None = None  # as the administrator gave them (displayed names)
    trees_only: bool = False  # a browse reads trees, never file contents


@dataclass(frozen=True)
class MachineKeys:
    """What a machine gets to open the repository: the password (formats 1-2), or a writer bundle
    and, for a restore, the content keys of exactly what it reads (format 3)."""

    password: str | None = None
    writer: dict[str, Any] | None = None
    grants: dict[str, str] | None = None  # object key → base64 content key
    # Too many keys for one command: they are in this one-off object, sealed under ``grants_key``
    grants_object: str | None = None
    grants_key: str | None = None

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


GRANT_BUDGET = 24 * 1024  # bytes of JSON: a command with its sealed access must fit one 64 KiB message
GRANTS_PREFIX = "grants/"  # one-off grant objects (``forget_grant`` removes them when the command ends)


def forget_grant(ctx: ServerContext, repository_id: str, sealed: dict[str, Any]) -> None:
    """Remove a command's one-off grant object, if it had one (its keys are useless without the command)."""
    name = sealed.get("grants_object")
    if not name:
        return
    repository = load_repository(ctx, repository_id)
    provider = ctx.provider_for(repository.credential_id)
    try:
        store = provider.storage.open_store(repository.location)
        try:
            store.delete_or_hide(str(name))
        finally:
            store.close()
    finally:
        provider.close()


def machine_keys(
    repo: engine.Repository,
    password: str,
    grant: RestoreGrant | None = None,
    *,
    machine_id: str | None = None,
) -> MachineKeys:
    """The keys for one command to a machine; ``repo`` is opened here with full keys (with its index
    when there is a ``grant``). Format 3: never the password (a job's own included), and the key
    of ``machine_id``'s own index files (no other machine's)."""
    if repo.config.version < CONFIDENTIAL_FORMAT:
        return MachineKeys(password=password)
    prefix = agent_write_prefix(machine_id) if machine_id is not None else None
    writer = repo.writer_bundle(prefix).to_json()
    if grant is None:
        return MachineKeys(writer=writer)
    exact = [engine.resolve_path(repo, grant.snapshot_id, p) for p in grant.paths or []]
    legacy: set[str] = set()
    keys = restore_keys(repo, grant.snapshot_id, exact or None, trees_only=grant.trees_only, legacy=legacy)
    if legacy:
        raise ConfigurationError(
            f"restore point {grant.snapshot_id[:12]} reads {len(legacy)} object(s) written before the "
            "repository moved to format 3, which no machine can decrypt",
            hint="download it through the server (`cloudkeep restore download`), or prune first: it "
            "rewrites old packs in format 3",
        )
    encoded = {key: base64.b64encode(value).decode() for key, value in keys.items()}
    plain = json.dumps(encoded).encode()
    if len(plain) <= GRANT_BUDGET:
        return MachineKeys(writer=writer, grants=encoded)
    # More than one command carries (a large volume): a one-off object under a key only the sealed
    # command holds; AES-GCM with its name as associated data, so it cannot be swapped for another.
    name, key = GRANTS_PREFIX + secrets.token_hex(16), secrets.token_bytes(32)
    nonce = secrets.token_bytes(12)
    repo.store.put(name, nonce + AESGCM(key).encrypt(nonce, plain, name.encode()), if_absent=True)
    return MachineKeys(writer=writer, grants_object=name, grants_key=base64.b64encode(key).decode())


def keys_for_machine(
    provider: CloudProvider,
    location: str,
    password: str,
    grant: RestoreGrant | None = None,
    *,
    machine_id: str | None = None,
) -> MachineKeys:
    """``machine_keys`` from a repository opened here for it (and closed again)."""
    try:
        repo = open_with_full_keys(provider, location, password, load_index=grant is not None)
    except NotFoundError:  # not initialised yet: the machine creates it on first use, as before
        return MachineKeys(password=password)
    try:
        return machine_keys(repo, password, grant, machine_id=machine_id)
    finally:
        close_opened(repo)


def agent_access(
    provider: CloudProvider,
    repository: Repository,
    machine_id: str,
    keys: str | MachineKeys,
    *,
    expires_seconds: int = DEFAULT_CREDENTIALS_TTL,
) -> dict[str, Any]:
    """The sealed ``repository`` of a command (RepositoryAccess): scoped store URL, options, keys.

    ``keys``: a password (formats 1-2) or ``machine_keys``. Always scoped to the machine's own
    namespace and create-only: forget and prune run on the server with the repository's own
    credential, which never leaves it (docs/security.md).
    """
    prefix = agent_write_prefix(machine_id)
    creds = provider.storage.scoped_credentials(repository.location, prefix, expires_seconds=expires_seconds)
    fields = MachineKeys(password=keys).fields() if isinstance(keys, str) else keys.fields()
    return {
        "store_url": creds.store_url,
        "options": dict(creds.options),
        **fields,
        "writer_prefix": prefix,
        "expires_at": creds.expires_at.astimezone(UTC).isoformat(),
    }
