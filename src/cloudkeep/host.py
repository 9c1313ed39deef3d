"""Protecting the real host: the machine cloudkeep runs on, backed up like any lab machine.

``protect`` creates (idempotently) a local credential, a lab whose single machine has the real
``/`` as its root (the local provider's ``root`` override, set only here), a protection group with
just that machine, a distribution repository, a backup repository folder and a file-level job of
the given paths. A rescan then installs the machine-side services for real: ``/opt/cloudkeep``,
``/etc/cloudkeep``, ``/var/lib/cloudkeep`` (systemd units when systemd is PID 1, else the
installer's pidfile fallback). Everything goes through the ``Client``, as the CLI and API do.

``root`` exists for tests only: they pass a temporary folder so that nothing touches the test
machine's ``/``. Rendering lives in ``cloudkeep.cli.host``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from cloudkeep.errors import CloudkeepError, ConfigurationError, NotFoundError
from cloudkeep.local_setup import ensure_distribution_repository, ensure_local_credential, exists
from cloudkeep.providers.local.machine import Lab, SimulatedMachine
from cloudkeep.server.client import Client
from cloudkeep.server.services.schemas import (
    JobCreate,
    JobUpdate,
    MachineDetail,
    ProtectionGroupCreate,
    ProtectionGroupUpdate,
    RepositoryCreate,
    RestorePointView,
    Retention,
)

CREDENTIAL = "this-host"
GROUP = "this-host"
JOB = "this-host-backup"
BACKUP_REPOSITORY = "this-host-repository"
DISTRIBUTION_REPOSITORY = "this-host-distribution"
HOST_TAG = ("cloudkeep-host", "this-host")
DEFAULT_PATHS = ("/etc", "/home")
DEFAULT_EXCLUDES = ("**/.cache", "*.tmp")  # any .cache folder, at any depth
# What the installer puts on a machine (relative to its root); ``unprotect`` removes exactly these.
INSTALLED = ("opt/cloudkeep", "etc/cloudkeep", "var/lib/cloudkeep", "var/log/cloudkeep", "var/run/cloudkeep")
REMOVE_UNITS = """for svc in message agent transport; do
    unit=/etc/systemd/system/cloudkeep-$svc.service
    [ -f "$unit" ] || continue
    systemctl disable --now "cloudkeep-$svc.service" 2>/dev/null || true
    rm -f "$unit"
done
systemctl daemon-reload 2>/dev/null || true
"""
# Always skipped: cloudkeep's own code, config, keys and caches are not the host's data.
OWN_FILES = tuple(f"/{relative}" for relative in INSTALLED)


class HostError(CloudkeepError):
    """The host protection could not be set up or used."""


@dataclass(frozen=True)
class HostLayout:
    """Where the host protection keeps its things, all under the server home."""

    home: Path
    root: Path = Path("/")

    @property
    def lab_dir(self) -> Path:
        return self.home / "host"

    @property
    def storage_root(self) -> Path:
        return self.lab_dir / "storage"

    @property
    def distribution_dir(self) -> Path:
        return self.storage_root / "distribution"

    @property
    def default_repository(self) -> Path:
        return self.home / "host-repository"

    @property
    def password_file(self) -> Path:
        return self.home / "host-repository.password"


def machine_name() -> str:
    """This host's name, made acceptable as a machine name (letters, digits, '.', '_', '-')."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).strip("-._")[:63]
    return name or "this-host"


def _password(layout: HostLayout, password_file: Path | None) -> str:
    """The given password file's first line, or one generated once into the home (0600)."""
    if password_file is not None:
        try:
            password = password_file.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the password file {password_file}: {exc}") from exc
        if not password:
            raise ConfigurationError(f"the password file {password_file} is empty")
        return password
    if layout.password_file.exists():
        return layout.password_file.read_text().strip()
    password = secrets.token_urlsafe(24)
    fd = os.open(layout.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password


def _normalize(paths: list[str]) -> list[str]:
    if not paths:
        raise ConfigurationError("give at least one path to protect", hint="e.g. --path /etc --path /home")
    cleaned = []
    for path in paths:
        if not path.startswith("/"):
            raise ConfigurationError(
                f"{path!r} is not an absolute path", hint="paths are as the host sees them"
            )
        cleaned.append(path.rstrip("/") or "/")
    return sorted(dict.fromkeys(cleaned))


def host_machine(layout: HostLayout) -> SimulatedMachine:
    """The lab entry for this host, created on first use; its root is ``layout.root``."""
    lab = Lab(layout.lab_dir)
    existing = lab.list()
    if existing:
        machine = existing[0]
        if Path(machine.info().get("root") or "") != layout.root:
            raise HostError(
                f"this server already protects a host with root {machine.info().get('root')}",
                hint="run `cloudkeep host unprotect` first to change it",
            )
        return machine
    name = machine_name()
    # The services run with this interpreter (it has cloudkeep's dependencies), not a new venv.
    return lab.create_machine(
        name,
        tags={HOST_TAG[0]: HOST_TAG[1]},
        root=str(layout.root),
        hostname=socket.gethostname(),
        env={"CLOUDKEEP_PYTHON": sys.executable},
    )


def protect(
    c: Client,
    layout: HostLayout,
    paths: list[str],
    *,
    repository: Path | None = None,
    password_file: Path | None = None,
    excludes: list[str] | None = None,
) -> SimulatedMachine:
    """Create what is missing (idempotent) and point the job at ``paths``; returns the host machine."""
    wanted = _normalize(paths)
    layout.home.mkdir(parents=True, exist_ok=True)
    machine = host_machine(layout)
    ensure_local_credential(
        c,
        CREDENTIAL,
        lab_dir=layout.lab_dir,
        storage_root=layout.storage_root,
        description="This host, protected like a lab machine.",
    )
    ensure_distribution_repository(
        c, DISTRIBUTION_REPOSITORY, credential=CREDENTIAL, location=layout.distribution_dir
    )
    target = (repository or layout.default_repository).expanduser().resolve()
    if exists(c.get_repository, BACKUP_REPOSITORY):
        current = Path(c.get_repository(BACKUP_REPOSITORY).location)
        if repository is not None and current != target:
            raise HostError(
                f"the host is already backed up to {current}",
                hint="run `cloudkeep host unprotect` first to change the repository",
            )
    else:
        c.create_repository(
            RepositoryCreate(
                name=BACKUP_REPOSITORY,
                purpose="backup",
                credential=CREDENTIAL,
                location=str(target),
                password=_password(layout, password_file),  # type: ignore[arg-type]
            )
        )
    if not exists(c.get_group, GROUP):
        c.create_group(
            ProtectionGroupCreate(
                name=GROUP,
                credential=CREDENTIAL,
                distribution_repository=DISTRIBUTION_REPOSITORY,
                include_tags={HOST_TAG[0]: HOST_TAG[1]},
                description="The machine this cloudkeep server runs on.",
            )
        )
    elif not c.get_group(GROUP).enabled:  # protected again after `host unprotect`
        c.update_group(GROUP, ProtectionGroupUpdate(enabled=True))
    # Never back up the server's own state or the repository into itself (e.g. a home under /home).
    own = [*OWN_FILES, str(layout.home.resolve()), c.get_repository(BACKUP_REPOSITORY).location]
    skip = list(dict.fromkeys([*(excludes if excludes is not None else DEFAULT_EXCLUDES), *own]))
    if exists(c.get_job, JOB):
        job = c.get_job(JOB)
        if job.includes != wanted or (excludes is not None and job.excludes != skip):
            c.update_job(JOB, JobUpdate(includes=wanted, excludes=skip if excludes is not None else None))
        if not job.enabled:
            c.set_job_enabled(JOB, True)
    else:
        c.create_job(
            JobCreate(
                name=JOB,
                repository=BACKUP_REPOSITORY,
                protection_groups=[GROUP],
                mode="file",
                includes=wanted,
                excludes=skip,
                retention=Retention(keep_last=7, keep_daily=7, keep_weekly=4, keep_monthly=6),
                description="Files of this host.",
            )
        )
    return machine


def host_view(c: Client) -> MachineDetail:
    """The server's view of the host machine (after a rescan)."""
    try:
        items = c.list_machines(group=GROUP).items
    except NotFoundError:
        items = []
    if not items:
        raise HostError("this host is not protected yet", hint="run `cloudkeep host protect --path /etc`")
    return c.get_machine(items[0].id)


def restore_points(c: Client) -> list[RestorePointView]:
    view = host_view(c)
    return sorted(c.list_restore_points(machine=view.id).items, key=lambda p: p.created_at)


def unprotect(c: Client, layout: HostLayout) -> list[str]:
    """Stop the services and remove what the installer put on the host; disable the job and group.

    The catalog, the repositories and their password file are kept: the backups stay listable and
    restorable (``cloudkeep restore-point list``), and ``host protect`` turns protection back on.
    Returns what was removed or disabled.
    """
    done: list[str] = []
    lab = Lab(layout.lab_dir) if layout.lab_dir.exists() else None
    for machine in lab.list() if lab else []:
        root = machine.root
        installer = root / "opt/cloudkeep/install.sh"
        if installer.exists():
            machine.run(f'sh "{installer}" --stop', timeout=120)
        if root == Path("/"):  # only the real root uses systemd units: disable and remove them
            machine.run(REMOVE_UNITS, timeout=120)
        for relative in INSTALLED:
            folder = root / relative
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)
                done.append(f"removed {folder}")
    if exists(c.get_job, JOB):
        c.set_job_enabled(JOB, False)
        done.append(f"disabled job {JOB}")
    if exists(c.get_group, GROUP):
        c.update_group(GROUP, ProtectionGroupUpdate(enabled=False))
        done.append(f"disabled protection group {GROUP}")
    return done
