"""Shell completion of names and enum values (``cloudkeep --install-completion`` sets it up).

Name candidates come from the client the command would use (embedded or ``--api-url``); a
completion never creates server state and never prints an error: on any failure it offers nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from cloudkeep.cli.common import Names, build_settings
from cloudkeep.providers.registry import provider_kinds
from cloudkeep.server.client import open_client

MODES = ("entire", "volume", "file")
PROVIDERS = tuple(provider_kinds())
PURPOSES = ("backup", "distribution")
SESSION_KINDS = ("backup", "rescan", "restore", "check", "maintenance")
ON_DISAPPEAR = ("keep", "unmanage")
IMAGE_FORMATS = ("raw", "vhd")


def choices(*values: str) -> Callable[[str], list[str]]:
    """Completion of a fixed set of values."""

    def complete(incomplete: str) -> list[str]:
        return [value for value in values if value.startswith(incomplete)]

    return complete


def names_of(kind: str) -> Callable[[typer.Context, str], list[str]]:
    """Completion of the names of one kind of object: machine, repository, credential, job, group."""

    def complete(ctx: typer.Context, incomplete: str) -> list[str]:
        try:
            root = ctx.find_root().params
            settings = build_settings(root.get("home"), root.get("api_url"), root.get("token"))
            embedded = not settings.api_url and not settings.database_url
            if embedded and not (settings.home / "cloudkeep.db").exists():
                return []  # opening the embedded server would create a database and a master key
            with open_client(settings) as c:
                names = Names(c).all(kind)
        except Exception:  # a completion prints nothing, whatever went wrong
            return []
        return sorted(name for name in set(names.values()) if name.startswith(incomplete))

    return complete
