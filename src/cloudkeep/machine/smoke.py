"""``python -m cloudkeep.machine.smoke``: does the machine side work on this interpreter?

Imports every machine-side module (the cloud SDK modules only when that SDK is installed: a
machine carries its own cloud's alone), checks that nothing of the server came along, then backs
up a small tree into a local repository and restores it byte for byte. Prints one JSON line and
exits 0, or prints the failure and exits 1. Run by the tests under every CPython 3.9-3.13 from a
venv built by ``install.sh``, and usable by hand on a machine.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import platform
import sys
import tempfile
from pathlib import Path

MACHINE_PACKAGES = ("cloudkeep.machine", "cloudkeep.repo", "cloudkeep.protocol", "cloudkeep.storage")
MACHINE_MODULES = (
    "cloudkeep.compat",
    "cloudkeep.errors",
    "cloudkeep.pathnames",
    "cloudkeep.providers.base",
    "cloudkeep.providers.queues",
    "cloudkeep.providers.local.queues",
    "cloudkeep.providers.local.storage",
    "cloudkeep.providers.aws.queues",
    "cloudkeep.providers.aws.storage",
    "cloudkeep.providers.azure.queues",
    "cloudkeep.providers.azure.storage",
)
# What a machine never loads: the server and its stack.
FORBIDDEN = ("cloudkeep.server", "fastapi", "sqlalchemy", "alembic", "uvicorn", "croniter", "psycopg")
CLOUD_SDKS = ("boto3", "botocore", "azure")


def machine_module_names() -> list[str]:
    names = list(MACHINE_MODULES)
    for package in MACHINE_PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(module.__path__, package + ".")]
    return sorted({n for n in names if not n.endswith(".__main__")})


def import_all() -> tuple[list[str], list[str]]:
    """(imported, skipped): a module is skipped only when a cloud SDK it needs is not installed."""
    imported, skipped = [], []
    for name in machine_module_names():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in CLOUD_SDKS:
                raise
            skipped.append(name)
        else:
            imported.append(name)
    return imported, skipped


def round_trip(work: Path) -> dict[str, int]:
    """Back up a small tree (files, a symlink, an empty folder) to a local repository and restore it."""
    from cloudkeep.repo import KdfParams, Repository, backup_files, restore
    from cloudkeep.storage.local import LocalStore

    source = work / "source"
    (source / "docs").mkdir(parents=True)
    (source / "empty").mkdir()
    (source / "docs" / "a.txt").write_text("hello from the machine side\n" * 100)
    (source / "blob.bin").write_bytes(os.urandom(300_000) * 2)
    os.symlink("docs/a.txt", source / "link")
    repo = Repository.create(LocalStore(work / "repo"), "smoke-password", kdf=KdfParams(n=2**10))
    snapshot = backup_files(repo, [source], hostname="smoke")
    repo = Repository.open(LocalStore(work / "repo"), "smoke-password")
    result = restore(repo, snapshot.id, work / "out")
    restored = work / "out" / source.relative_to(source.anchor)
    for path in sorted(source.rglob("*")):
        twin = restored / path.relative_to(source)
        if path.is_symlink():
            assert os.readlink(twin) == os.readlink(path), f"symlink {path.name} differs"
        elif path.is_file():
            assert twin.read_bytes() == path.read_bytes(), f"{path.name} differs after restore"
        else:
            assert twin.is_dir(), f"folder {path.name} missing after restore"
    return {"files": result.files, "bytes_new": int(snapshot.stats["bytes_new"])}


def main() -> int:
    try:
        imported, skipped = import_all()
        loaded = sorted(m for m in sys.modules if m.startswith(FORBIDDEN))
        if loaded:
            raise AssertionError(f"the machine side loaded server modules: {', '.join(loaded[:5])}")
        with tempfile.TemporaryDirectory(prefix="cloudkeep-smoke-") as work:
            stats = round_trip(Path(work))
    except Exception as exc:  # the report is the point: say what failed, exit non-zero
        print(f"cloudkeep smoke FAILED on Python {platform.python_version()}: {type(exc).__name__}: {exc}")
        return 1
    report = {
        "python": platform.python_version(),
        "imported": len(imported),
        "skipped": skipped,
        **stats,
    }
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
