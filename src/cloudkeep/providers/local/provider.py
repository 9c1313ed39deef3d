"""The local provider: the embedded default, machines simulated in a lab folder on this host.

Credential: ``{}`` (nothing to authenticate). Options:

* ``lab_dir`` (required): the lab folder (``machines/``, the queue database, storage);
* ``queue_database``: SQLite file for queues (default ``<lab_dir>/queues.sqlite3``);
* ``storage_root``: folder relative locations resolve against (default ``<lab_dir>/storage``);
* ``signing_key``: hex key for signed URLs (default: generated once into ``<lab_dir>/signing.key``);
* ``url_host`` / ``url_port``: where the signed-URL server listens (default ``127.0.0.1``, any port).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloudkeep.errors import ConfigurationError
from cloudkeep.providers.base import CloudProvider
from cloudkeep.providers.local.commands import LocalCommandChannel
from cloudkeep.providers.local.facts import FACTS
from cloudkeep.providers.local.inventory import LocalInventory
from cloudkeep.providers.local.machine import Lab
from cloudkeep.providers.local.queues import LocalQueueService
from cloudkeep.providers.local.storage import LocalStorageService, new_signing_key


def _signing_key(lab_dir: Path, configured: str | None) -> bytes:
    if configured:
        return bytes.fromhex(configured)
    path = lab_dir / "signing.key"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(new_signing_key().hex().encode())
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # first writer wins across processes
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return bytes.fromhex(path.read_text().strip())


class LocalProvider(CloudProvider):
    facts = FACTS

    def __init__(self, options: Mapping[str, Any]) -> None:
        if not options.get("lab_dir"):
            raise ConfigurationError("the local provider needs a lab folder", hint="set the option lab_dir")
        self.lab = Lab(Path(options["lab_dir"]))
        lab_dir = self.lab.path
        self._inventory = LocalInventory(self.lab)
        self._commands = LocalCommandChannel(self.lab)
        self._queues = LocalQueueService(options.get("queue_database") or lab_dir / "queues.sqlite3")
        self._storage = LocalStorageService(
            Path(options.get("storage_root") or lab_dir / "storage"),
            _signing_key(lab_dir, options.get("signing_key")),
            url_host=str(options.get("url_host", "127.0.0.1")),
            url_port=int(options.get("url_port", 0)),
        )

    @property
    def inventory(self) -> LocalInventory:
        return self._inventory

    @property
    def commands(self) -> LocalCommandChannel:
        return self._commands

    @property
    def queues(self) -> LocalQueueService:
        return self._queues

    @property
    def storage(self) -> LocalStorageService:
        return self._storage

    def check_permissions(self) -> list[str]:
        """The lab, queue database and storage root must be writable by this process."""
        missing = []
        for label, path in (
            ("write lab folder", self.lab.path),
            ("write queue database", self._queues.database.path.parent),
            ("write storage root", self._storage.storage_root),
        ):
            path.mkdir(parents=True, exist_ok=True)
            if not os.access(path, os.W_OK | os.X_OK):
                missing.append(f"local:{label} ({path})")
        return missing

    def close(self) -> None:
        self._storage.close()


def create_local_provider(credential: Mapping[str, Any], options: Mapping[str, Any]) -> LocalProvider:
    return LocalProvider(options)
