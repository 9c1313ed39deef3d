"""Build installer bundles from this very package.

A bundle folder holds, for one version::

    cloudkeep-<v>-py3-none-any.whl    the package (a real wheel: pip-installable, or unpacked as is)
    wheels/<arch>/*.whl               its dependencies for Linux x86_64 / aarch64, CPython 3.9-3.13
                                      (from a wheelhouse: see wheelhouse.py; absent in a dev bundle)
    install.sh / install.ps1          the platform installers
    manifest.json                     SHA-256 of each file + Ed25519 signature (the trust anchor)
    cloudkeep-<v>-linux.tar.gz        manifest + install.sh + wheel: one download per Linux machine
    cloudkeep-<v>-windows.zip         manifest + install.ps1 + wheel: one download per Windows machine
    archives.json                     server-side index of the archives' SHA-256 (not signed)

The wheel is written directly (the format is a zip with a dist-info folder), which is faster
than ``pip wheel`` and reproducible: fixed timestamps, sorted entries.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.metadata
import importlib.resources
import io
import json
import re
import shutil
import tarfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import cloudkeep
from cloudkeep.errors import ConfigurationError
from cloudkeep.machine.bundle.manifest import (
    ARCHIVES_NAME,
    MANIFEST_NAME,
    ArchiveEntry,
    BundleManifest,
    FileEntry,
    PlatformEntry,
    public_key_b64,
    sha256_file,
)
from cloudkeep.machine.bundle.wheelhouse import requirement_lines, wheels_by_arch

_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*([.+][A-Za-z0-9.]+)?$")
_EPOCH = (1980, 1, 1, 0, 0, 0)
_EXTRA_RE = re.compile(r'extra == "([A-Za-z0-9_.-]+)"')
INSTALLERS = {"linux": "install.sh", "windows": "install.ps1"}


def wheel_name(version: str) -> str:
    return f"cloudkeep-{version}-py3-none-any.whl"


def archive_name(version: str, platform: str) -> str:
    return f"cloudkeep-{version}-linux.tar.gz" if platform == "linux" else f"cloudkeep-{version}-windows.zip"


def installer_text(platform: str) -> bytes:
    """The installer script shipped for ``platform`` (package data next to this module)."""
    return (importlib.resources.files("cloudkeep.machine.bundle") / INSTALLERS[platform]).read_bytes()


def build_bundle(
    dest_dir: Path, *, version: str, signing_key: Ed25519PrivateKey, wheelhouse: Path | None = None
) -> BundleManifest:
    """Build (or rebuild) the bundle for ``version`` into ``dest_dir`` and return its signed manifest.

    With ``wheelhouse`` the Linux bundle carries every dependency wheel, so machines install offline;
    without it (development, local-provider labs) machines must bring an interpreter that already
    has the dependencies (``CLOUDKEEP_PYTHON``).
    """
    if not _VERSION_RE.match(version):
        raise ConfigurationError(
            f"invalid bundle version {version!r}", hint="use a PEP 440 version such as 0.1.0 or 0.1.0.post1"
        )
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    wheel = dest_dir / wheel_name(version)
    _write_wheel(wheel, version)
    for script in INSTALLERS.values():
        (dest_dir / script).write_bytes(installer_text("linux" if script.endswith(".sh") else "windows"))
    wheel_names = _copy_wheels(dest_dir, wheelhouse)
    names = [wheel.name, *INSTALLERS.values(), *wheel_names]
    manifest = BundleManifest(
        version=version,
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        files={
            n: FileEntry(sha256=sha256_file(dest_dir / n), size=(dest_dir / n).stat().st_size) for n in names
        },
        platforms={
            "linux": PlatformEntry(installer="install.sh", files=[wheel.name, "install.sh", *wheel_names]),
            "windows": PlatformEntry(installer="install.ps1", files=[wheel.name, "install.ps1"]),
        },
    )
    manifest.sign(signing_key)
    (dest_dir / MANIFEST_NAME).write_text(manifest.to_json())
    for platform in INSTALLERS:
        path = dest_dir / archive_name(version, platform)
        members = [MANIFEST_NAME, *manifest.platforms[platform].files]
        (_write_tar if platform == "linux" else _write_zip)(path, dest_dir, members)
        manifest.archives[platform] = ArchiveEntry(
            file=path.name, sha256=sha256_file(path), size=path.stat().st_size
        )
    archives = {k: v.model_dump() for k, v in manifest.archives.items()}
    (dest_dir / ARCHIVES_NAME).write_text(json.dumps(archives, indent=2, sort_keys=True) + "\n")
    return manifest


def _copy_wheels(dest_dir: Path, wheelhouse: Path | None) -> list[str]:
    """Copy one wheel per name and architecture into ``dest_dir/wheels/<arch>/``; their bundle names."""
    shutil.rmtree(dest_dir / "wheels", ignore_errors=True)
    if wheelhouse is None:
        return []
    names = []
    for arch, paths in wheels_by_arch(wheelhouse).items():
        (dest_dir / "wheels" / arch).mkdir(parents=True)
        for path in paths:
            shutil.copyfile(path, dest_dir / "wheels" / arch / path.name)
            names.append(f"wheels/{arch}/{path.name}")
    return names


def _package_files() -> list[tuple[str, Path]]:
    """Every file of the installed ``cloudkeep`` package, as (archive name, path), sorted."""
    root = Path(cloudkeep.__file__).parent
    found = []
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or path.suffix in {".pyc", ".pyo"}:
            continue
        name = "cloudkeep/" + path.relative_to(root).as_posix()
        if path.is_file():
            found.append((name, path))
        elif path.is_dir() and not any(path.iterdir()):
            found.append((name + "/", path))  # keep empty (namespace) package folders importable
    return found


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _write_wheel(path: Path, version: str) -> None:
    dist_info = f"cloudkeep-{version}.dist-info"
    requires = requirement_lines()
    metadata = (
        "\n".join(
            ["Metadata-Version: 2.1", "Name: cloudkeep", f"Version: {version}", "Requires-Python: >=3.9"]
            + [f"Provides-Extra: {e}" for e in sorted(set(_EXTRA_RE.findall(" ".join(requires))))]
            + [f"Requires-Dist: {r}" for r in requires]
        )
        + "\n"
    )
    extra = {
        f"{dist_info}/METADATA": metadata.encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: cloudkeep-bundle\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"{dist_info}/entry_points.txt": b"[console_scripts]\ncloudkeep = cloudkeep.cli.main:run\n",
    }
    record: list[str] = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        files = _package_files()
        for name, _ in files:
            if name.endswith("/"):
                archive.writestr(zipfile.ZipInfo(name, _EPOCH), b"")
        entries = [(n, f.read_bytes()) for n, f in files if not n.endswith("/")] + sorted(extra.items())
        for name, data in entries:
            archive.writestr(zipfile.ZipInfo(name, _EPOCH), data, zipfile.ZIP_DEFLATED)
            record.append(f"{name},{_record_hash(data)},{len(data)}")
        record.append(f"{dist_info}/RECORD,,")
        archive.writestr(
            zipfile.ZipInfo(f"{dist_info}/RECORD", _EPOCH), "\n".join(record) + "\n", zipfile.ZIP_DEFLATED
        )


def _write_tar(path: Path, folder: Path, members: list[str]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in members:
            data = (folder / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755 if name.endswith(".sh") else 0o644, 0
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))


def _write_zip(path: Path, folder: Path, members: list[str]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in members:
            archive.writestr(
                zipfile.ZipInfo(name, _EPOCH), (folder / name).read_bytes(), zipfile.ZIP_DEFLATED
            )


def load_or_build(
    cache_dir: Path, *, version: str, signing_key: Ed25519PrivateKey, wheelhouse: Path | None = None
) -> tuple[BundleManifest, Path]:
    """The bundle for ``version`` under ``cache_dir/<version>``: reused when intact and signed by this key."""
    folder = Path(cache_dir) / version
    if (folder / MANIFEST_NAME).is_file() and (folder / ARCHIVES_NAME).is_file():
        try:
            manifest = BundleManifest.load(folder)
            manifest.verify_signature(public_key_b64(signing_key))
            manifest.verify_files(folder)
            if (wheelhouse is not None) != any(name.startswith("wheels/") for name in manifest.files):
                raise ValueError("built with(out) the wheels")
            for entry in manifest.archives.values():
                if sha256_file(folder / entry.file) != entry.sha256:
                    raise ValueError(entry.file)
            return manifest, folder
        except Exception:
            pass
    return build_bundle(folder, version=version, signing_key=signing_key, wheelhouse=wheelhouse), folder
