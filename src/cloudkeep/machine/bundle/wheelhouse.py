"""The wheelhouse: every dependency wheel a Linux machine needs, for each architecture and CPython.

Machines install offline (``pip --no-index``), so the bundle carries the wheels. They are fetched
once with ``pip download --only-binary=:all:`` per (architecture, Python) into a cache folder and
reused; an air-gapped server is given a folder of the same layout instead::

    <wheelhouse>/<arch>/cp<XY>/*.whl      arch: x86_64 | aarch64, XY: 39 … 313

The same pure-Python wheel appears under several Pythons; the bundle keeps one copy per architecture.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from cloudkeep.errors import ConfigurationError

ARCHES = ("x86_64", "aarch64")
PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
MACHINE_EXTRAS = ("aws", "azure")  # a machine installs the one of its cloud
# cryptography declares Requires-Python ">=3.9,!=3.9.0,!=3.9.1": asked for "3.9", pip finds nothing.
_PIP_PYTHON = {"3.9": "3.9.2"}
# cryptography's abi3 wheels need glibc 2.28 (RHEL 8, Debian 10, Ubuntu 18.10 and later).
_GLIBC_MINORS = range(17, 29)
_EXTRA_RE = re.compile(r"""extra\s*==\s*["']([A-Za-z0-9_.-]+)["']""")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cloudkeep" / "wheelhouse"


def requirement_lines() -> list[str]:
    """cloudkeep's Requires-Dist lines (extras as ``; extra == "x"`` markers).

    From a source checkout its ``pyproject.toml`` is the truth (an editable install's metadata goes
    stale when the file changes); from an installed wheel, the package metadata.
    """
    pyproject = Path(__file__).resolve().parents[4] / "pyproject.toml"
    if pyproject.is_file():
        import tomllib  # the bundle is built on the server (3.11+), never on a machine

        project = tomllib.loads(pyproject.read_text())["project"]
        lines = list(project.get("dependencies", []))
        for extra, specs in sorted(project.get("optional-dependencies", {}).items()):
            lines += [f'{spec}; extra == "{extra}"' for spec in specs]
        return lines
    try:
        return list(importlib.metadata.requires("cloudkeep") or [])
    except importlib.metadata.PackageNotFoundError:
        return []


def machine_requirements() -> list[str]:
    """The requirements of the base install plus the cloud extras, markers stripped."""
    found = []
    for line in requirement_lines():
        spec, _, marker = line.partition(";")
        extra = _EXTRA_RE.search(marker)
        if extra is None or extra.group(1) in MACHINE_EXTRAS:
            found.append(spec.strip())
    if not found:
        raise ConfigurationError(
            "cannot read cloudkeep's requirements (package metadata missing)",
            hint="install cloudkeep with pip (pip install -e .) before building bundles",
        )
    return sorted(set(found))


def python_tag(python: str) -> str:
    return "cp" + python.replace(".", "")


def platform_tags(arch: str) -> list[str]:
    return [f"manylinux2014_{arch}"] + [f"manylinux_2_{m}_{arch}" for m in _GLIBC_MINORS]


def fetch_wheelhouse(
    cache_dir: Path | None = None,
    *,
    requirements: Sequence[str] | None = None,
    arches: Sequence[str] = ARCHES,
    pythons: Sequence[str] = PYTHONS,
    interpreters: Mapping[str, str] | None = None,
) -> Path:
    """Fill ``cache_dir`` (default: ~/.cache/cloudkeep/wheelhouse) for every (arch, Python); skip filled ones.

    A (arch, Python) folder is complete when its stamp names the same requirements: a changed
    requirement set downloads again, anything else is reused without touching the network.

    pip evaluates environment markers (``urllib3<1.27; python_version < "3.10"``) for the Python
    that runs it, whatever ``--python-version`` says; so each Python's set is resolved by an
    interpreter of that version when one is found (``interpreters`` maps "3.9" to a path, else
    ``python3.9`` on PATH), and by this one, approximately, otherwise (the stamp records which).
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    reqs = sorted(requirements) if requirements is not None else machine_requirements()
    # pip itself rides along once (for the oldest Python, so it runs on all): the installer runs pip
    # from its wheel, so machines need neither ensurepip nor a pip of their own.
    resolvers = {python: _resolver(python, (interpreters or {}).get(python)) for python in pythons}
    for arch in arches:
        pins: list[str] = []
        for python in pythons:
            command = resolvers[python]
            exact = command[0] != sys.executable or sys.version_info[:2] == _minor(python)
            stamp_text = "\n".join([*reqs, f"markers: {'exact' if exact else 'approximate'}"]) + "\n"
            stamp_name = ".complete-" + hashlib.sha256(stamp_text.encode()).hexdigest()[:16]
            target = folder / arch / python_tag(python)
            if not (target / stamp_name).is_file():
                extra = ["pip"] if python == pythons[0] else []
                _download(command, target, [*reqs, *extra], arch, python, pins)
                (target / stamp_name).write_text(stamp_text)
            if not pins:
                # Later Pythons get the oldest one's versions where they can: the pure-Python wheels
                # are then shared and the bundle carries each once.
                pins = sorted({_pin(path.name) for path in target.glob("*.whl")})
    return folder


def _minor(python: str) -> tuple[int, int]:
    major, minor = python.split(".")[:2]
    return int(major), int(minor)


def _resolver(python: str, interpreter: str | None) -> list[str]:
    """``<python> -m pip`` for an interpreter of that version that has pip, else this interpreter's pip."""
    for candidate in (interpreter, shutil.which(f"python{python}")):
        if not candidate:
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys, pip; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == python:
            return [candidate, "-m", "pip"]
    return [sys.executable, "-m", "pip"]


def _pin(wheel: str) -> str:
    name, version = wheel.split("-")[:2]
    return f"{name}=={version}"


def _download(
    command: Sequence[str], target: Path, reqs: Sequence[str], arch: str, python: str, pins: Sequence[str]
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    if pins:
        constraints = staging / "constraints.txt"
        constraints.write_text("\n".join(pins) + "\n")
        if _run_download(command, staging, [*reqs, "-c", str(constraints)], arch, python).returncode == 0:
            constraints.unlink()
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            return
        for partial in staging.iterdir():  # a pinned version has no wheel for this Python: resolve freely
            partial.unlink()
    result = _run_download(command, staging, reqs, arch, python)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigurationError(
            f"pip download of the machine wheels for {arch} / CPython {python} failed: "
            + (result.stderr.strip().splitlines() or ["no output"])[-1],
            hint="check the package index is reachable, or pass --wheelhouse DIR (wheels fetched elsewhere)",
        )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _run_download(
    command: Sequence[str], dest: Path, reqs: Sequence[str], arch: str, python: str
) -> subprocess.CompletedProcess[str]:
    args = [*command, "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:"]
    for tag in platform_tags(arch):
        args += ["--platform", tag]
    args += ["--python-version", _PIP_PYTHON.get(python, python), "--implementation", "cp"]
    args += ["--dest", str(dest), *reqs]
    return subprocess.run(args, capture_output=True, text=True)


def wheels_by_arch(wheelhouse: Path, arches: Sequence[str] = ARCHES) -> dict[str, list[Path]]:
    """One wheel per file name under ``<wheelhouse>/<arch>/``, sorted by name; refuses an empty arch."""
    found: dict[str, list[Path]] = {}
    for arch in arches:
        unique: dict[str, Path] = {}
        for path in sorted((Path(wheelhouse) / arch).rglob("*.whl")):
            if not _fits(path.name, arch):
                raise ConfigurationError(f"wheelhouse {wheelhouse}: {path} is not a wheel for Linux {arch}")
            unique.setdefault(path.name, path)
        if not unique:
            raise ConfigurationError(
                f"wheelhouse {wheelhouse} has no wheels for {arch}",
                hint="run `cloudkeep bundle build` with network once, or fill <wheelhouse>/<arch>/cp3X/",
            )
        found[arch] = [unique[name] for name in sorted(unique)]
    return found


def _fits(name: str, arch: str) -> bool:
    platform = name[: -len(".whl")].rsplit("-", 1)[-1]
    return platform == "any" or all(
        p.endswith("_" + arch) and p.startswith("manylinux") for p in platform.split(".")
    )
