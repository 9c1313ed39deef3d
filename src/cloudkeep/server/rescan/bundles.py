"""The server's current installer bundle and its copy in a group's distribution repository.

The bundle version is a server setting (``bundle_version``, default: the package version), so an
administrator upgrades the fleet by raising it; built bundles are cached under
``<home>/bundles/<version>`` and uploaded to each distribution repository once (the upload is
skipped when an object of the same size and checksum is already there).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

import cloudkeep
from cloudkeep.machine.bundle import BundleManifest, load_or_build
from cloudkeep.machine.bundle.manifest import MANIFEST_NAME
from cloudkeep.providers.base import StorageService
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import ServerSetting

BUNDLE_VERSION_KEY = "bundle_version"
URL_EXPIRES_SECONDS = 900  # long enough to download, short enough to be useless when leaked
_build_lock = threading.Lock()


def current_bundle_version(ctx: ServerContext) -> str:
    with ctx.db() as session:
        row = session.scalar(select(ServerSetting).where(ServerSetting.key == BUNDLE_VERSION_KEY))
        return row.value if row else cloudkeep.__version__


def set_bundle_version(ctx: ServerContext, version: str) -> None:
    """Make ``version`` the bundle rescan deploys (machines upgrade when their group has auto_update)."""
    with ctx.db() as session:
        row = session.get(ServerSetting, BUNDLE_VERSION_KEY)
        if row is None:
            session.add(ServerSetting(key=BUNDLE_VERSION_KEY, value=version))
        else:
            row.value = version


def bundle_cache_dir(ctx: ServerContext) -> Path:
    return ctx.settings.home / "bundles"


def wheelhouse_dir(ctx: ServerContext) -> Path:
    """The machine wheels ``cloudkeep bundle build`` fetches once (``<arch>/cp3X/*.whl``)."""
    return ctx.settings.home / "wheelhouse"


def current_bundle(ctx: ServerContext) -> tuple[BundleManifest, Path]:
    """The signed bundle for the current version, built on first use.

    It carries the machine wheels when the wheelhouse has been fetched (``cloudkeep bundle build``);
    without them only machines given an interpreter with the dependencies (labs) can install.
    """
    wheelhouse = wheelhouse_dir(ctx)
    with _build_lock:
        return load_or_build(
            bundle_cache_dir(ctx),
            version=current_bundle_version(ctx),
            signing_key=ctx.signing_key,
            wheelhouse=wheelhouse if any(wheelhouse.glob("*/cp3*/*.whl")) else None,
        )


@dataclass(frozen=True)
class PublishedBundle:
    """A bundle in a distribution repository: where each platform archive lives and its SHA-256."""

    manifest: BundleManifest
    location: str
    keys: dict[str, str]  # platform -> object key of the archive
    uploaded: bool  # False when the repository already had it

    def signed_url(
        self, storage: StorageService, platform: str, *, expires_seconds: int | None = None
    ) -> str:
        expires = URL_EXPIRES_SECONDS if expires_seconds is None else expires_seconds
        return storage.signed_url(self.location, self.keys[platform], method="GET", expires_seconds=expires)


def publish(
    storage: StorageService, location: str, manifest: BundleManifest, folder: Path
) -> PublishedBundle:
    """Put the bundle's archives (and manifest) under ``bundles/<version>/`` unless already there.

    Presence is judged by size only: the store is trusted for availability, not integrity. The
    machine checks every byte against the SHA-256 the server sends, and a mismatch makes the
    session remove the object (``discard``) so the next rescan uploads it again.
    """
    storage.ensure_container(location)
    store = storage.open_store(location)
    prefix = f"bundles/{manifest.version}/"
    uploaded = False
    try:
        items = [(a.file, a.size) for a in manifest.archives.values()]
        items.append((MANIFEST_NAME, (folder / MANIFEST_NAME).stat().st_size))
        for name, size in items:
            info = store.stat(prefix + name)
            if info is None or info.size != size:
                store.put(prefix + name, (folder / name).read_bytes())
                uploaded = True
    finally:
        store.close()
    keys = {platform: prefix + archive.file for platform, archive in manifest.archives.items()}
    return PublishedBundle(manifest, location, keys, uploaded)


def discard(storage: StorageService, published: PublishedBundle, platform: str) -> None:
    """Remove a platform archive that failed verification on a machine (re-uploaded next time)."""
    store = storage.open_store(published.location)
    try:
        store.delete(published.keys[platform])
    finally:
        store.close()
