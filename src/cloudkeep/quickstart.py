"""The quickstart lab: three simulated machines, local repositories, a protection group and a job.

Everything here goes through the same ``Client`` the CLI and the API use; the quickstart only adds
the lab's contents (seeded, realistic files on each machine) and the checks that prove a restore
returned the right bytes. Rendering lives in ``cloudkeep.cli.quickstart``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cloudkeep.errors import CloudkeepError
from cloudkeep.local_setup import ensure_distribution_repository, ensure_local_credential, exists
from cloudkeep.providers.local.machine import Lab
from cloudkeep.server.client import Client
from cloudkeep.server.services.schemas import (
    JobCreate,
    ProtectionGroupCreate,
    RepositoryCreate,
    Retention,
)

CREDENTIAL = "quickstart-local"
BACKUP_REPOSITORY = "quickstart-repository"
DISTRIBUTION_REPOSITORY = "quickstart-distribution"
GROUP = "quickstart-lab"
JOB = "quickstart-backup"
LAB_TAG = ("cloudkeep-lab", "quickstart")
MACHINES = ("web-1", "db-1", "app-1")
BACKED_UP = ["/etc", "/home", "/srv", "/var/www"]
EXCLUDED = ["*.tmp", "/home/*/.cache"]
# The file the quickstart changes after the first backup and then restores from the first restore point.
PROBE_FILE = "/etc/cloudkeep-demo/app.conf"


@dataclass(frozen=True)
class QuickstartLayout:
    """Where the quickstart keeps things: a server home of its own, never a real server's state."""

    home: Path

    @property
    def lab_dir(self) -> Path:
        return self.home / "lab"

    @property
    def storage_root(self) -> Path:
        return self.lab_dir / "storage"

    @property
    def repository_dir(self) -> Path:
        return self.storage_root / "repository"

    @property
    def distribution_dir(self) -> Path:
        return self.storage_root / "distribution"

    @property
    def password_file(self) -> Path:
        return self.home / "quickstart-repository.password"

    @property
    def marker(self) -> Path:
        return self.home / "quickstart.json"

    @property
    def restore_dir(self) -> str:
        """Where restored files land on the machine (as the machine sees it)."""
        return "/restore/quickstart"


def _password(layout: QuickstartLayout) -> str:
    """The repository password, generated once, kept 0600 beside the database: lose it, lose the backups."""
    if layout.password_file.exists():
        return layout.password_file.read_text().strip()
    password = secrets.token_urlsafe(24)
    fd = os.open(layout.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password


def seed_machine(root: Path, name: str) -> None:
    """Realistic contents for a lab machine: configs, documents, a web site, app data, a cache to exclude."""
    rng = random.Random(name)
    files: dict[str, bytes] = {
        "etc/hostname": f"{name}\n".encode(),
        "etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {name}\n".encode(),
        PROBE_FILE.lstrip("/"): probe_content(name, generation=0),
        "etc/cloudkeep-demo/limits.conf": b"".join(
            f"user{i} soft nofile {1024 * i}\n".encode() for i in range(50)
        ),
    }
    words = [
        "backup",
        "restore",
        "cloud",
        "machine",
        "queue",
        "agent",
        "bucket",
        "object",
        "snapshot",
        "chunk",
    ]
    for i in range(40):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(200, 2000)))
        files[f"home/admin/documents/report-{i:03d}.txt"] = text.encode()
    for i in range(30):
        files[f"var/www/html/page-{i:02d}.html"] = (
            f"<html><body><h1>{name} page {i}</h1></body></html>\n".encode()
        )
    files["srv/app/data.bin"] = rng.randbytes(2 * 2**20)
    files["srv/app/already-compressed.gz"] = rng.randbytes(512 * 2**10)
    files["home/admin/.cache/thumbs.db"] = rng.randbytes(64 * 2**10)  # excluded by the job
    files["srv/app/session.tmp"] = b"scratch\n"  # excluded by the job
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(data)
    index = root / "var/www/html/index.html"
    if not index.is_symlink():
        index.symlink_to("page-00.html")


def probe_content(name: str, generation: int) -> bytes:
    header = f"# {name} application settings, generation {generation}\n"
    return (header + f"workers = {4 + generation}\nlisten = 0.0.0.0:8080\n").encode()


def mutate_machine(root: Path, name: str, generation: int) -> dict[str, int]:
    """A day's worth of change: an edited config, an appended log, a new document, a deleted one."""
    (root / PROBE_FILE.lstrip("/")).write_bytes(probe_content(name, generation))
    log = root / "srv/app/events.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        fh.write(b"".join(f"generation {generation} event {i}\n".encode() for i in range(2000)))
    (root / f"home/admin/documents/new-{generation:03d}.txt").write_text(
        f"written in generation {generation}\n"
    )
    victim = root / f"home/admin/documents/report-{generation % 40:03d}.txt"
    victim.unlink(missing_ok=True)
    data = root / "srv/app/data.bin"
    with data.open("r+b") as fh:  # an in-place rewrite in the middle of a big file
        fh.seek(2**20)
        fh.write(random.Random(generation).randbytes(4096))
    return {"changed": 3, "added": 1, "deleted": 1}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Lab3:
    """The quickstart's objects, by name, once they exist."""

    layout: QuickstartLayout
    lab: Lab
    generation: int


def ensure_lab(client: Client, layout: QuickstartLayout) -> Lab3:
    """Create what is missing (idempotent): credential, repositories, machines, protection group, job."""
    layout.home.mkdir(parents=True, exist_ok=True)
    state = load_state(layout)
    lab = Lab(layout.lab_dir)
    for name in MACHINES:
        # A simulated machine borrows this interpreter (which has cloudkeep's dependencies) instead of
        # building a venv from PyPI as a real machine's installer does.
        machine = lab.get(name) or lab.create_machine(
            name,
            tags={LAB_TAG[0]: LAB_TAG[1], "role": name.split("-")[0]},
            env={"CLOUDKEEP_PYTHON": sys.executable},
        )
        seed_machine(machine.root, name)
    ensure_local_credential(
        client,
        CREDENTIAL,
        lab_dir=layout.lab_dir,
        storage_root=layout.storage_root,
        description="The embedded default: simulated machines in the quickstart lab.",
    )
    ensure_distribution_repository(
        client, DISTRIBUTION_REPOSITORY, credential=CREDENTIAL, location=layout.distribution_dir
    )
    if not exists(client.get_repository, BACKUP_REPOSITORY):
        client.create_repository(
            RepositoryCreate(
                name=BACKUP_REPOSITORY,
                purpose="backup",
                credential=CREDENTIAL,
                location=str(layout.repository_dir),
                password=_password(layout),  # type: ignore[arg-type]
            )
        )
    if not exists(client.get_group, GROUP):
        client.create_group(
            ProtectionGroupCreate(
                name=GROUP,
                credential=CREDENTIAL,
                distribution_repository=DISTRIBUTION_REPOSITORY,
                include_tags={LAB_TAG[0]: LAB_TAG[1]},
                description="The quickstart's three lab machines.",
            )
        )
    if not exists(client.get_job, JOB):
        client.create_job(
            JobCreate(
                name=JOB,
                repository=BACKUP_REPOSITORY,
                protection_groups=[GROUP],
                mode="file",
                includes=BACKED_UP,
                excludes=EXCLUDED,
                retention=Retention(keep_last=7, keep_daily=7, keep_weekly=4),
                description="Configs, home folders, app data and the web site of every lab machine.",
            )
        )
    return Lab3(layout, lab, int(state["generation"]))


def load_state(layout: QuickstartLayout) -> dict[str, int]:
    """``generation``: times the lab changed; ``first_backup_generation``: what the oldest backup holds."""
    if layout.marker.exists():
        return dict(json.loads(layout.marker.read_text()))
    return {"generation": 0}


def save_state(layout: QuickstartLayout, **values: int) -> None:
    layout.marker.write_text(json.dumps({**load_state(layout), **values}))


def stop_machine_services(root: Path) -> int:
    """Stop a simulated machine's daemons (non-systemd fallback pidfiles); returns how many were signalled."""
    stopped = 0
    for pidfile in sorted((root / "var/run/cloudkeep").glob("*.pid")):
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
            stopped += 1
        except (ValueError, ProcessLookupError, PermissionError):
            pass
        pidfile.unlink(missing_ok=True)
    return stopped


def clean(layout: QuickstartLayout) -> list[str]:
    """Remove the quickstart: stop its machines' services, then delete its whole server home."""
    if not layout.home.exists():
        return []
    pids: list[int] = []
    if layout.lab_dir.exists():
        for machine in Lab(layout.lab_dir).list():
            pids += _recorded_pids(machine.root)
            stop_machine_services(machine.root)
    _wait_until_gone(pids)  # a service still exiting writes its queue database's WAL under our feet
    shutil.rmtree(layout.home)
    return [str(layout.home)]


def _recorded_pids(root: Path) -> list[int]:
    pids = []
    for pidfile in (root / "var/run/cloudkeep").glob("*.pid"):
        with contextlib.suppress(ValueError, OSError):
            pids.append(int(pidfile.read_text().strip()))
    return pids


def _wait_until_gone(pids: list[int], timeout: float = 10.0) -> None:
    """Poll until the signalled services have exited (SIGKILL whatever is left at the deadline)."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive:
        for pid in list(alive):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive.discard(pid)
            except PermissionError:
                alive.discard(pid)
        if not alive:
            return
        if time.monotonic() > deadline:
            for pid in alive:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)


class QuickstartError(CloudkeepError):
    """A quickstart step did not produce what it should have."""
