"""Idempotent set-up shared by the two embedded-default flows: the quickstart lab and `cloudkeep host`.

Both need a local credential pointing at a lab folder and a distribution repository in it; they
create them through the same ``Client`` an administrator uses, only when missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudkeep.errors import NotFoundError
from cloudkeep.server.client import Client
from cloudkeep.server.services.schemas import CredentialCreate, RepositoryCreate


def exists(lookup: Callable[[str], Any], ref: str) -> bool:
    """Whether ``lookup(ref)`` finds something (a ``get_*`` method of the client)."""
    try:
        lookup(ref)
    except NotFoundError:
        return False
    return True


def ensure_local_credential(
    c: Client, name: str, *, lab_dir: Path, storage_root: Path, description: str
) -> None:
    if not exists(c.get_credential, name):
        c.create_credential(
            CredentialCreate(
                name=name,
                provider="local",
                options={"lab_dir": str(lab_dir), "storage_root": str(storage_root)},
                description=description,
            )
        )


def ensure_distribution_repository(c: Client, name: str, *, credential: str, location: Path) -> None:
    if not exists(c.get_repository, name):
        c.create_repository(
            RepositoryCreate(name=name, purpose="distribution", credential=credential, location=str(location))
        )
